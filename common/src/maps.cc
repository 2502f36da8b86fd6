#include "ibdbg/maps.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

namespace ibdbg {

const char* MapKindName(MapKind kind) {
  switch (kind) {
    case MapKind::Anon: return "anon";
    case MapKind::File: return "file";
    case MapKind::Heap: return "heap";
    case MapKind::Stack: return "stack";
    case MapKind::Vdso: return "vdso";
    case MapKind::Vvar: return "vvar";
    case MapKind::VvarVclock: return "vvar_vclock";
    case MapKind::Vsyscall: return "vsyscall";
    case MapKind::OtherSpecial: return "special";
  }
  return "unknown";
}

namespace {

class LineParser {
 public:
  explicit LineParser(std::string_view s) : s_(s) {}

  template <typename T>
  bool Number(T& out, int base) {
    auto [p, ec] = std::from_chars(s_.data(), s_.data() + s_.size(), out, base);
    if (ec != std::errc() || p == s_.data()) return false;
    s_.remove_prefix(static_cast<size_t>(p - s_.data()));
    return true;
  }
  bool Char(char c) {
    if (s_.empty() || s_.front() != c) return false;
    s_.remove_prefix(1);
    return true;
  }
  // At least one blank, unless the line ends here.
  bool Blanks() {
    size_t n = 0;
    while (n < s_.size() && (s_[n] == ' ' || s_[n] == '\t')) ++n;
    s_.remove_prefix(n);
    return n > 0 || s_.empty();
  }
  bool Flag(bool& out, char yes) {
    if (s_.empty() || (s_.front() != yes && s_.front() != '-')) return false;
    out = s_.front() == yes;
    s_.remove_prefix(1);
    return true;
  }
  std::string_view Rest() const { return s_; }

 private:
  std::string_view s_;
};

MapKind Classify(std::string_view path) {
  if (path.empty()) return MapKind::Anon;
  if (path.front() != '[' || path.back() != ']') return MapKind::File;
  if (path == "[heap]") return MapKind::Heap;
  if (path == "[stack]" || path.starts_with("[stack:")) return MapKind::Stack;
  if (path == "[vdso]") return MapKind::Vdso;
  if (path == "[vvar]") return MapKind::Vvar;
  if (path == "[vvar_vclock]") return MapKind::VvarVclock;
  if (path == "[vsyscall]") return MapKind::Vsyscall;
  return MapKind::OtherSpecial;
}

bool ParseLine(std::string_view line, MapEntry& e) {
  LineParser p(line);
  if (!(p.Number(e.start, 16) && p.Char('-') && p.Number(e.end, 16) && p.Blanks()))
    return false;
  if (!(p.Flag(e.r, 'r') && p.Flag(e.w, 'w') && p.Flag(e.x, 'x'))) return false;
  if (p.Char('s')) {
    e.shared = true;
  } else if (!p.Char('p')) {
    return false;
  }
  if (!(p.Blanks() && p.Number(e.offset, 16) && p.Blanks())) return false;
  if (!(p.Number(e.dev_major, 16) && p.Char(':') && p.Number(e.dev_minor, 16) && p.Blanks()))
    return false;
  if (!(p.Number(e.inode, 10) && p.Blanks())) return false;
  if (e.end <= e.start) return false;

  std::string_view path = p.Rest();
  constexpr std::string_view kDeleted = " (deleted)";
  // Only named files can be deleted; a bracketed name is never a file.
  if (path.size() > kDeleted.size() && path.ends_with(kDeleted) && path.front() == '/') {
    e.deleted = true;
    path.remove_suffix(kDeleted.size());
  }
  e.path.assign(path);
  e.kind = Classify(path);
  return true;
}

}  // namespace

std::vector<MapEntry> ParseMaps(std::string_view text) {
  std::vector<MapEntry> out;
  size_t lineno = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    MapEntry e;
    if (!ParseLine(line, e)) {
      std::string shown(line.substr(0, 120));
      throw ImageError("maps line " + std::to_string(lineno) + " is malformed: '" + shown + "'");
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<MapEntry> ReadMaps(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/maps";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ImageError(ErrnoMessage(path));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ImageError(ErrnoMessage(path));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  try {
    return ParseMaps(text);
  } catch (const ImageError& e) {
    throw ImageError(path + ": " + e.what());
  }
}

}  // namespace ibdbg
