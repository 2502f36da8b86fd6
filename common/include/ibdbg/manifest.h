#pragma once

// manifest.json: the index of an image directory. It names one proc-<pid>.img
// per process and, for images derived from another (ibdbg translate), records
// where they came from so that provenance can be followed back to a capture.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ibdbg/error.h"

namespace ibdbg::image {

inline constexpr int kManifestFormat = 1;
inline constexpr char kManifestName[] = "manifest.json";

struct ManifestProcess {
  int pid = 0;
  std::string host, exe;
  std::string image;  // file name inside the image directory, e.g. "proc-123.img"
  uint64_t bytes = 0;         // size of the .img file
  uint64_t memory_bytes = 0;  // raw page bytes stored
  int threads = 0;
  // MPI world rank from the process's environment at capture (ibdbg/mpi_rank.h);
  // -1: unknown, and absent from the JSON.
  int rank = -1;
};

struct Manifest {
  int format = kManifestFormat;
  std::string ibdbg_version, job_id;
  std::string created;  // ISO 8601, UTC
  int64_t created_ns = 0;
  std::string kind = "capture";  // or "translate"
  // When the application state was captured; for a capture it equals
  // `created` and may be left empty, a translated image inherits it.
  std::string captured;
  std::vector<ManifestProcess> processes;
  // One entry per agent of the capture: {"name": host name, "kernel": ...,
  // "via": "HOST:PID"} where "via" names the process on another host that
  // started this host's part through the job's remote shell.  May be empty
  // (older images).
  nlohmann::json hosts = nlohmann::json::array();
  // Translated images: {"image": absolute path of the input,
  // "checksum": "xxh3:<16 hex>" (ImageChecksum of the input),
  // "options": {...}}. null for captures.
  nlohmann::json parent;
};

// Accepts an image directory, a symlink to one (images/latest), or the path
// of a file inside one (proc-<pid>.img, manifest.json); returns the
// directory's canonical absolute path. Throws ImageError.
std::string ResolveImageDir(const std::string& image);

// ResolveImageDir + parse + validation. Throws ImageError (one line).
Manifest ReadManifest(const std::string& image);
// `where` names the source in error messages.
Manifest ParseManifest(const std::string& text, const std::string& where);

std::string ManifestToJson(const Manifest& m);  // pretty, 2-space indent

// Creates the file (0600, must not exist), writes and fsyncs it.
void WriteManifest(const std::string& path, const Manifest& m);
// Same into an fd the caller owns (e.g. from AtomicDir::CreateFile).
void WriteManifestFd(int fd, const Manifest& m, const std::string& shown);

// "xxh3:<16 lower-case hex digits>": XXH3-64 over the bytes of manifest.json
// followed by every *.img regular file in byte-wise name order, i.e. what
// `cat manifest.json $(LC_ALL=C ls *.img) | xxhsum -H3` prints.
std::string ImageChecksum(const std::string& image_dir);

// The *.img regular files of a directory, sorted by name.
std::vector<std::string> ListImageFiles(const std::string& image_dir);

// "2024-11-25T11:46:00.123Z" for a CLOCK_REALTIME time in nanoseconds.
std::string FormatIsoTime(int64_t realtime_ns);
int64_t RealtimeNs();

}  // namespace ibdbg::image
