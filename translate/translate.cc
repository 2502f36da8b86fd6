#include "translate.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "ibdbg/atomic_dir.h"
#include "ibdbg/image_chain.h"
#include "ibdbg/image_file.h"
#include "ibdbg/manifest.h"
#include "ibdbg/proto.h"
#include "ibdbg/version.h"

namespace ibdbg::translate {

namespace {

using image::RecordHeader;
using image::RecordType;
using ojson = nlohmann::ordered_json;

std::string Hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

template <size_t N>
std::string CStr(const char (&a)[N]) {
  return std::string(a, strnlen(a, N));
}

// Returns an error description, or "" if `p` is usable as either side of a
// mapping.
std::string CheckMappingPath(const std::string& p, const char* which) {
  if (p.empty()) return std::string(which) + " is empty";
  if (p[0] != '/') return std::string(which) + " must be an absolute path";
  if (p.find('\0') != std::string::npos) return std::string(which) + " contains a NUL byte";
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t next = p.find('/', pos);
    if (next == std::string::npos) next = p.size();
    if (p.compare(pos, next - pos, "..") == 0 && next - pos == 2)
      return std::string(which) + " must not contain '..'";
    pos = next + 1;
  }
  return "";
}

std::string StripTrailingSlashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

Mapping Normalize(const Mapping& m, const std::string& shown) {
  for (auto [p, which] : {std::pair{&m.first, "OLD"}, std::pair{&m.second, "NEW"}}) {
    std::string err = CheckMappingPath(*p, which);
    if (!err.empty()) throw ImageError("invalid path mapping '" + shown + "': " + err);
  }
  return {StripTrailingSlashes(m.first), StripTrailingSlashes(m.second)};
}

// Lexically absolute, without "." / ".." / repeated slashes; then the
// existing parent is canonicalized so symlinked parents compare equal.
std::string AbsoluteForCompare(const std::string& p) {
  std::string abs = p;
  if (abs.empty() || abs[0] != '/') {
    std::unique_ptr<char, decltype(&std::free)> cwd(::getcwd(nullptr, 0), &std::free);
    if (!cwd) throw ImageError(ErrnoMessage("cannot get the current directory"));
    abs = std::string(cwd.get()) + "/" + abs;
  }
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos < abs.size()) {
    size_t next = abs.find('/', pos);
    if (next == std::string::npos) next = abs.size();
    std::string c = abs.substr(pos, next - pos);
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!c.empty() && c != ".") {
      parts.push_back(c);
    }
    pos = next + 1;
  }
  if (parts.empty()) return "/";
  std::string parent;
  for (size_t i = 0; i + 1 < parts.size(); ++i) parent += "/" + parts[i];
  if (parent.empty()) parent = "/";
  std::unique_ptr<char, decltype(&std::free)> real(::realpath(parent.c_str(), nullptr),
                                                   &std::free);
  if (real) parent = real.get();
  return (parent == "/" ? "" : parent) + "/" + parts.back();
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void Close(const std::string& shown) {
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw ImageError(ErrnoMessage("closing " + shown));
  }

 private:
  int fd_;
};

template <class T>
T Load(const std::vector<uint8_t>& data, const std::string& path, const char* what,
       bool trailing_data_ok = false) {
  if (data.size() < sizeof(T) || (!trailing_data_ok && data.size() != sizeof(T)))
    throw ImageError(path + ": " + what + " record has " + std::to_string(data.size()) +
                     " bytes, expected " + std::to_string(sizeof(T)));
  T t;
  std::memcpy(&t, data.data(), sizeof t);
  return t;
}

// Translates one process image. With `out` null it only reads, verifies and
// reports; the same code path then writes, so a dry run reports exactly what
// a real run does.
class ProcessTranslator {
 public:
  ProcessTranslator(const std::string& path, const image::ManifestProcess& mp,
                    const PathMapper& mapper, TranslateResult* report)
      : path_(path), mp_(mp), mapper_(mapper), report_(report) {}

  void Run(image::ImageWriter* out) {
    out_ = out;
    image::ImageReader reader(path_);
    RecordHeader h;
    std::vector<uint8_t> data;
    bool have_proc = false;
    uint64_t unknown = 0;
    while (reader.NextHeader(h)) {
      reader.ReadPayload(data);
      switch (static_cast<RecordType>(h.type)) {
        case RecordType::Header:
          Header(h, data);
          break;
        case RecordType::Process:
          if (have_proc) throw ImageError(path_ + ": more than one process record");
          have_proc = true;
          Process(h, data);
          break;
        case RecordType::Vma:
          Vma(h, data);
          break;
        case RecordType::Fd:
          FdRecord(h, data);
          break;
        case RecordType::Pages:
          if (h.arg % image::kPageSize || data.size() % image::kPageSize ||
              h.arg + data.size() < h.arg)
            throw ImageError(path_ + ": pages at " + Hex(h.arg) + " are not page-aligned");
          if (out_) out_->AddPages(h.arg, data.data(), data.size());
          break;
        case RecordType::Thread:
        case RecordType::Signals:
        case RecordType::Json:
        case RecordType::Ipc:  // its /dev/shm paths name the replay's own /dev/shm
          Copy(h, data);
          break;
        default:
          // Newer ibdbg versions may add records; carrying them over keeps
          // the image whole, but any paths inside stay as they were.
          ++unknown;
          Copy(h, data);
          break;
      }
    }
    if (!have_proc) throw ImageError(path_ + ": no process record");
    if (unknown && report_)
      report_->warnings.push_back("pid " + std::to_string(mp_.pid) + ": " +
                                  std::to_string(unknown) +
                                  " record(s) of unknown type copied unchanged");
  }

 private:
  void Copy(const RecordHeader& h, const std::vector<uint8_t>& data) {
    if (out_) out_->AddRecord(static_cast<RecordType>(h.type), h.arg, data.data(), data.size());
  }

  // Rewrites a path if a mapping applies; `label` names it in the report.
  template <size_t N>
  void MapField(char (&field)[N], const std::string& label) {
    std::string old = CStr(field);
    std::optional<std::string> now = mapper_.Map(old);
    if (!now || *now == old) return;
    if (now->size() >= N)
      throw ImageError(Label(label) + ": " + old + " would become " +
                       std::to_string(now->size()) + " bytes long (at most " +
                       std::to_string(N - 1) + ")");
    std::memset(field, 0, N);
    std::memcpy(field, now->data(), now->size());
    if (report_) report_->changes.push_back(Label(label) + ": " + old + " -> " + *now);
  }

  std::string Label(const std::string& what) const {
    return "pid " + std::to_string(mp_.pid) + " " + what;
  }

  void Header(const RecordHeader& h, const std::vector<uint8_t>& data) {
    ojson j;
    try {
      j = ojson::parse(data.begin(), data.end());
    } catch (const ojson::exception&) {
      throw ImageError(path_ + ": header record is not valid JSON");
    }
    if (!j.is_object()) throw ImageError(path_ + ": header record is not a JSON object");
    // Mirrors Process.exe, which is what gets reported.
    auto it = j.find("exe");
    if (it != j.end() && it->is_string()) {
      if (auto now = mapper_.Map(it->get<std::string>())) *it = *now;
    }
    if (out_) {
      std::string text = j.dump(-1, ' ', false, ojson::error_handler_t::replace);
      out_->AddRecord(RecordType::Header, h.arg, text);
    }
  }

  void Process(const RecordHeader& h, const std::vector<uint8_t>& data) {
    auto p = Load<ibdbg_process_info>(data, path_, "process");
    if (p.proto_version > IBDBG_PROTO_VERSION)
      throw ImageError(path_ + ": process record version " + std::to_string(p.proto_version) +
                       " is newer than this ibdbg supports (" +
                       std::to_string(IBDBG_PROTO_VERSION) + ")");
    if (p.pid != mp_.pid)
      throw ImageError(path_ + ": holds pid " + std::to_string(p.pid) +
                       " but the manifest says " + std::to_string(mp_.pid));
    MapField(p.exe, "exe");
    MapField(p.cwd, "cwd");
    if (out_) out_->AddRecord(RecordType::Process, h.arg, &p, sizeof p);
  }

  void Vma(const RecordHeader& h, const std::vector<uint8_t>& data) {
    auto v = Load<ibdbg_image_vma>(data, path_, "vma");
    MapField(v.path, "vma " + Hex(v.start));
    if (out_) out_->AddRecord(RecordType::Vma, h.arg, &v, sizeof v);
  }

  void FdRecord(const RecordHeader& h, const std::vector<uint8_t>& data) {
    auto f = Load<ibdbg_fd_info>(data, path_, "fd", true);
    MapField(f.path, "fd " + std::to_string(f.fd));
    if (!out_) return;
    std::vector<uint8_t> rec(data);
    std::memcpy(rec.data(), &f, sizeof f);
    out_->AddRecord(RecordType::Fd, h.arg, rec.data(), rec.size());
  }

  const std::string& path_;
  const image::ManifestProcess& mp_;
  const PathMapper& mapper_;
  TranslateResult* report_;
  image::ImageWriter* out_ = nullptr;
};

void CheckOutput(const std::string& in_dir, const std::string& out_dir) {
  std::string abs = AbsoluteForCompare(out_dir);
  struct stat st;
  if (::lstat(out_dir.c_str(), &st) == 0) {
    std::unique_ptr<char, decltype(&std::free)> real(::realpath(out_dir.c_str(), nullptr),
                                                     &std::free);
    if ((real && in_dir == real.get()) || abs == in_dir)
      throw ImageError(out_dir + " is the input image; refusing to overwrite");
    throw ImageError(out_dir + " exists; refusing to overwrite");
  }
  if (errno != ENOENT) throw ImageError(ErrnoMessage("cannot check " + out_dir));
  if (abs == in_dir || abs.compare(0, in_dir.size() + 1, in_dir + "/") == 0)
    throw ImageError(out_dir + " is inside the input image " + in_dir);
}

}  // namespace

Mapping ParseMapping(const std::string& spec) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos)
    throw ImageError("invalid path mapping '" + spec + "': expected OLD=NEW");
  return Normalize({spec.substr(0, eq), spec.substr(eq + 1)}, spec);
}

PathMapper::PathMapper(std::vector<Mapping> maps) {
  for (const Mapping& m : maps) {
    Mapping n = Normalize(m, m.first + "=" + m.second);
    for (const Mapping& g : given_)
      if (g.first == n.first)
        throw ImageError("path mapping for " + n.first + " given more than once");
    given_.push_back(std::move(n));
  }
  longest_first_ = given_;
  std::stable_sort(longest_first_.begin(), longest_first_.end(),
                   [](const Mapping& a, const Mapping& b) { return a.first.size() > b.first.size(); });
}

std::optional<std::string> PathMapper::Map(const std::string& path) const {
  for (const auto& [from, to] : longest_first_) {
    // "/" is the one prefix that already ends at a component boundary.
    if (path == from) return to;
    const std::string base = from == "/" ? "" : from;
    if (path.size() <= base.size() || path[base.size()] != '/' ||
        path.compare(0, base.size(), base) != 0)
      continue;
    std::string rest = path.substr(base.size());
    std::string out = (to == "/" && !rest.empty() ? "" : to) + rest;
    return out.empty() ? "/" : out;
  }
  return std::nullopt;
}

// An incremental image (image_chain.h) has pages in its parents: the
// translation is of the full image its chain resolves to, made once into a
// private scratch directory, so that the output needs no parent.
class FlatInputs {
 public:
  ~FlatInputs() {
    if (!dir_.empty()) image::RemoveTree(AT_FDCWD, dir_);
  }
  std::string Get(const std::string& path) {
    auto it = done_.find(path);
    if (it != done_.end()) return it->second;
    std::vector<std::string> chain = image::ResolveChain(path);
    if (chain.size() == 1) return done_[path] = path;
    if (dir_.empty()) {
      const char* t = getenv("TMPDIR");
      std::string tmpl = std::string(t && *t ? t : "/tmp") + "/ibdbg-flat.XXXXXX";
      if (!mkdtemp(tmpl.data())) throw ImageError(ErrnoMessage("cannot make a scratch directory"));
      dir_ = tmpl;
    }
    std::string out = dir_ + "/" + std::to_string(done_.size()) + ".img";
    Fd fd(::open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (fd.get() < 0) throw ImageError(ErrnoMessage("cannot create " + out));
    image::FlattenChain(chain, fd.get());
    fd.Close(out);
    return done_[path] = out;
  }

 private:
  std::string dir_;
  std::map<std::string, std::string> done_;
};

TranslateResult TranslateImage(const std::string& in_image, const std::string& out_dir,
                               const TranslateOptions& opts) {
  PathMapper mapper(opts.map_paths);
  FlatInputs flat;
  // No mappings is a plain validated copy: still a target image with provenance.
  const std::string in_dir = image::ResolveImageDir(in_image);
  const image::Manifest in = image::ReadManifest(in_dir);
  if (out_dir.empty()) {
    if (!opts.dry_run) throw ImageError("no output image given");
  } else {
    CheckOutput(in_dir, out_dir);
  }

  // First pass: verify everything and collect the report, writing nothing,
  // so a damaged input is refused before any output exists.
  TranslateResult result;
  for (const image::ManifestProcess& mp : in.processes) {
    std::string path = flat.Get(in_dir + "/" + mp.image);
    ProcessTranslator(path, mp, mapper, &result).Run(nullptr);
  }
  if (opts.dry_run) return result;

  const std::string checksum = image::ImageChecksum(in_dir);
  image::Manifest out;
  out.ibdbg_version = IBDBG_VERSION;
  out.job_id = in.job_id;
  out.created_ns = image::RealtimeNs();
  out.created = image::FormatIsoTime(out.created_ns);
  out.kind = "translate";
  out.captured = in.captured.empty() ? in.created : in.captured;
  nlohmann::json specs = nlohmann::json::array();
  for (const Mapping& m : mapper.mappings()) specs.push_back(m.first + "=" + m.second);
  out.parent = {{"image", in_dir}, {"checksum", checksum}, {"options", {{"map_path", specs}}}};

  image::AtomicDir dir(out_dir);
  for (const image::ManifestProcess& mp : in.processes) {
    std::string path = flat.Get(in_dir + "/" + mp.image);
    std::string shown = dir.temp_path() + "/" + mp.image;
    Fd fd(dir.CreateFile(mp.image));
    image::ManifestProcess np = mp;
    {
      image::ImageWriter w(fd.get());
      ProcessTranslator(path, mp, mapper, nullptr).Run(&w);
      w.Finish();
      np.bytes = w.bytes_written();
    }
    fd.Close(shown);
    if (auto exe = mapper.Map(np.exe)) np.exe = *exe;
    out.processes.push_back(std::move(np));
  }
  {
    Fd fd(dir.CreateFile(image::kManifestName));
    image::WriteManifestFd(fd.get(), out, dir.temp_path() + "/" + image::kManifestName);
    fd.Close(image::kManifestName);
  }
  dir.Commit(false);
  return result;
}

}  // namespace ibdbg::translate
