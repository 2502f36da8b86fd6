#include "ibdbg/manifest.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>

namespace ibdbg::image {

namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// A manifest is a few KiB; anything huge is not one, and must not be slurped.
constexpr size_t kMaxManifestBytes = 64u << 20;

// nlohmann prefixes every message with "[json.exception.xxx.nnn] ", which
// says nothing to a user.
std::string JsonWhat(const std::exception& e) {
  std::string s = e.what();
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

std::string RealPath(const std::string& p) {
  std::unique_ptr<char, decltype(&std::free)> r(::realpath(p.c_str(), nullptr), &std::free);
  if (!r) throw ImageError(ErrnoMessage(p));
  return r.get();
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool PlainFileName(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos &&
         n.find('\0') == std::string::npos;
}

void WriteAll(int fd, const std::string& data, const std::string& shown) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t w = ::write(fd, data.data() + done, data.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw ImageError(ErrnoMessage("writing " + shown));
    }
    if (w == 0) throw ImageError("writing " + shown + ": write returned 0");
    done += static_cast<size_t>(w);
  }
}

// Field access that turns every shape problem into one line naming the field.
class Fields {
 public:
  Fields(const json& j, std::string where, std::string prefix = "")
      : j_(j), where_(std::move(where)), prefix_(std::move(prefix)) {}

  const json* Find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  [[noreturn]] void Bad(const char* key, const std::string& what) const {
    throw ImageError(where_ + ": field '" + prefix_ + key + "' " + what);
  }
  const json& Need(const char* key) const {
    const json* v = Find(key);
    if (!v) throw ImageError(where_ + ": missing field '" + prefix_ + key + "'");
    return *v;
  }
  std::string String(const char* key, bool required) const {
    const json* v = required ? &Need(key) : Find(key);
    if (!v) return {};
    if (!v->is_string()) Bad(key, "must be a string");
    return v->get<std::string>();
  }
  int64_t Int(const char* key, bool required, int64_t lo = INT64_MIN,
              int64_t hi = INT64_MAX) const {
    const json* v = required ? &Need(key) : Find(key);
    if (!v) return 0;
    if (!v->is_number_integer()) Bad(key, "must be an integer");
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      Bad(key, "is out of range");
    int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) Bad(key, "is out of range (" + std::to_string(x) + ")");
    return x;
  }
  uint64_t Unsigned(const char* key) const {
    const json* v = Find(key);
    if (!v) return 0;
    if (!v->is_number_integer() || (!v->is_number_unsigned() && v->get<int64_t>() < 0))
      Bad(key, "must be a non-negative integer");
    return v->get<uint64_t>();
  }

 private:
  const json& j_;
  std::string where_;
  std::string prefix_;
};

}  // namespace

std::string ResolveImageDir(const std::string& image) {
  if (image.empty()) throw ImageError("no image given (empty path)");
  struct stat st;
  if (::stat(image.c_str(), &st) != 0) throw ImageError(ErrnoMessage(image));
  if (S_ISDIR(st.st_mode)) return RealPath(image);
  if (!S_ISREG(st.st_mode))
    throw ImageError(image + ": not an ibdbg image (not a directory or a regular file)");
  std::string real = RealPath(image);
  size_t slash = real.rfind('/');
  std::string base = real.substr(slash + 1);
  if (!EndsWith(base, ".img") && base != kManifestName)
    throw ImageError(image +
                     ": not an ibdbg image (expected an image directory or a proc-<pid>.img file)");
  return slash == 0 ? "/" : real.substr(0, slash);
}

Manifest ReadManifest(const std::string& image) {
  const std::string dir = ResolveImageDir(image);
  const std::string path = (dir == "/" ? "" : dir) + "/" + kManifestName;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) throw ImageError(image + ": not an ibdbg image (no manifest.json)");
    throw ImageError(ErrnoMessage("cannot open " + path));
  }
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw ImageError(ErrnoMessage("reading " + path, err));
    }
    if (r == 0) break;
    text.append(buf, static_cast<size_t>(r));
    if (text.size() > kMaxManifestBytes) {
      ::close(fd);
      throw ImageError(path + ": too large to be a manifest");
    }
  }
  ::close(fd);
  return ParseManifest(text, path);
}

Manifest ParseManifest(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw ImageError(where + ": invalid JSON (" + JsonWhat(e) + ")");
  }
  if (!j.is_object()) throw ImageError(where + ": invalid manifest (not a JSON object)");
  Fields f(j, where);
  Manifest m;
  // The format decides how to read the rest, so it is checked before any
  // other field: a newer manifest may legitimately lack them.
  m.format = static_cast<int>(f.Int("format", true, INT32_MIN, INT32_MAX));
  if (m.format > kManifestFormat)
    throw ImageError(where + ": format " + std::to_string(m.format) +
                     " is newer than this ibdbg supports (" + std::to_string(kManifestFormat) +
                     ")");
  if (m.format < 1) throw ImageError(where + ": invalid format " + std::to_string(m.format));
  m.ibdbg_version = f.String("ibdbg_version", true);
  m.job_id = f.String("job_id", true);
  m.created = f.String("created", true);
  m.created_ns = f.Int("created_ns", false);
  m.captured = f.String("captured", false);
  if (f.Find("kind")) m.kind = f.String("kind", true);
  if (m.kind.empty()) f.Bad("kind", "must not be empty");
  if (const json* p = f.Find("parent")) {
    if (!p->is_object()) f.Bad("parent", "must be an object");
    Fields pf(*p, where, "parent.");
    pf.String("image", true);
    pf.String("checksum", true);
    m.parent = *p;
  }
  if (const json* h = f.Find("hosts")) {
    if (!h->is_array()) f.Bad("hosts", "must be an array");
    for (size_t i = 0; i < h->size(); ++i) {
      Fields hf((*h)[i], where, "hosts[" + std::to_string(i) + "].");
      if (!(*h)[i].is_object()) hf.Bad("", "must be an object");
      hf.String("name", true);
      hf.String("via", false);
    }
    m.hosts = *h;
  }
  const json& procs = f.Need("processes");
  if (!procs.is_array()) f.Bad("processes", "must be an array");
  for (size_t i = 0; i < procs.size(); ++i) {
    std::string prefix = "processes[" + std::to_string(i) + "].";
    if (!procs[i].is_object())
      throw ImageError(where + ": field '" + prefix.substr(0, prefix.size() - 1) +
                       "' must be an object");
    Fields pf(procs[i], where, prefix);
    ManifestProcess p;
    p.pid = static_cast<int>(pf.Int("pid", true, 1, INT32_MAX));
    p.image = pf.String("image", true);
    // The name is joined to the image directory when read, so it must not
    // be able to point anywhere else.
    if (!PlainFileName(p.image)) pf.Bad("image", "must be a plain file name");
    p.host = pf.String("host", false);
    p.exe = pf.String("exe", false);
    p.bytes = pf.Unsigned("bytes");
    p.memory_bytes = pf.Unsigned("memory_bytes");
    p.threads = static_cast<int>(pf.Int("threads", false, 0, INT32_MAX));
    if (pf.Find("rank")) p.rank = static_cast<int>(pf.Int("rank", true, 0, INT32_MAX));
    for (const ManifestProcess& q : m.processes) {
      // Different hosts may reuse a pid; the same host cannot.
      if (q.pid == p.pid && q.host == p.host)
        throw ImageError(where + ": process " + std::to_string(p.pid) + " listed twice");
      if (q.image == p.image)
        throw ImageError(where + ": image file " + p.image + " listed twice");
    }
    m.processes.push_back(std::move(p));
  }
  return m;
}

std::string ManifestToJson(const Manifest& m) {
  ordered_json j;
  j["format"] = m.format;
  j["ibdbg_version"] = m.ibdbg_version;
  j["job_id"] = m.job_id;
  j["kind"] = m.kind;
  j["created"] = m.created;
  j["created_ns"] = m.created_ns;
  if (!m.captured.empty()) j["captured"] = m.captured;
  if (!m.parent.is_null()) j["parent"] = ordered_json::parse(m.parent.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!m.hosts.empty()) j["hosts"] = ordered_json::parse(m.hosts.dump(-1, ' ', false, json::error_handler_t::replace));
  ordered_json procs = ordered_json::array();
  for (const ManifestProcess& p : m.processes) {
    ordered_json e;
    e["pid"] = p.pid;
    e["image"] = p.image;
    e["host"] = p.host;
    e["exe"] = p.exe;
    e["threads"] = p.threads;
    e["bytes"] = p.bytes;
    e["memory_bytes"] = p.memory_bytes;
    if (p.rank >= 0) e["rank"] = p.rank;
    procs.push_back(std::move(e));
  }
  j["processes"] = std::move(procs);
  // Paths need not be UTF-8; a manifest that can always be written matters
  // more than exact bytes in fields that are there for display.
  return j.dump(2, ' ', false, ordered_json::error_handler_t::replace) + "\n";
}

void WriteManifestFd(int fd, const Manifest& m, const std::string& shown) {
  WriteAll(fd, ManifestToJson(m), shown);
  if (::fsync(fd) != 0) throw ImageError(ErrnoMessage("fsync " + shown));
}

void WriteManifest(const std::string& path, const Manifest& m) {
  std::string text = ManifestToJson(m);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) throw ImageError(ErrnoMessage("cannot create " + path));
  try {
    WriteAll(fd, text, path);
    if (::fsync(fd) != 0) throw ImageError(ErrnoMessage("fsync " + path));
  } catch (...) {
    ::close(fd);
    ::unlink(path.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(path.c_str());
    throw ImageError(ErrnoMessage("closing " + path, err));
  }
}

std::vector<std::string> ListImageFiles(const std::string& image_dir) {
  int dfd = ::open(image_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw ImageError(ErrnoMessage("cannot open " + image_dir));
  DIR* d = ::fdopendir(dfd);
  if (!d) {
    int err = errno;
    ::close(dfd);
    throw ImageError(ErrnoMessage("cannot list " + image_dir, err));
  }
  std::vector<std::string> out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() <= 4 || !EndsWith(n, ".img")) continue;
    struct stat st;
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
      out.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string ImageChecksum(const std::string& image_dir) {
  struct State {
    XXH3_state_t* s = XXH3_createState();
    ~State() { XXH3_freeState(s); }
  } st;
  if (!st.s || XXH3_64bits_reset(st.s) != XXH_OK)
    throw ImageError("out of memory creating a checksum state");
  const std::string base = image_dir == "/" ? "" : image_dir;
  if (::access((base + "/" + kManifestName).c_str(), F_OK) != 0 && errno == ENOENT)
    throw ImageError(image_dir + ": not an ibdbg image (no manifest.json)");
  std::vector<std::string> names{kManifestName};
  for (std::string& n : ListImageFiles(image_dir)) names.push_back(std::move(n));
  std::vector<char> buf(1 << 20);
  for (const std::string& n : names) {
    std::string path = base + "/" + n;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) throw ImageError(ErrnoMessage("cannot open " + path));
    for (;;) {
      ssize_t r = ::read(fd, buf.data(), buf.size());
      if (r < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        ::close(fd);
        throw ImageError(ErrnoMessage("reading " + path, err));
      }
      if (r == 0) break;
      XXH3_64bits_update(st.s, buf.data(), static_cast<size_t>(r));
    }
    ::close(fd);
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits_digest(st.s)));
  return std::string("xxh3:") + hex;
}

int64_t RealtimeNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

std::string FormatIsoTime(int64_t realtime_ns) {
  int64_t sec = realtime_ns / 1000000000;
  int64_t rem = realtime_ns % 1000000000;
  if (rem < 0) {
    rem += 1000000000;
    --sec;
  }
  time_t t = static_cast<time_t>(sec);
  tm tmv{};
  if (!::gmtime_r(&t, &tmv)) return "invalid time";
  char buf[64];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tmv);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(rem / 1000000));
  return buf;
}

}  // namespace ibdbg::image
