#include "ibdbg/image_chain.h"

#include "ibdbg/proto.h"

#include <sys/stat.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

namespace ibdbg::image {

Ranges Normalize(Ranges r) {
  std::sort(r.begin(), r.end(), [](const Range& a, const Range& b) { return a.start < b.start; });
  Ranges out;
  for (const Range& x : r) {
    if (x.end <= x.start) continue;
    if (!out.empty() && x.start <= out.back().end)
      out.back().end = std::max(out.back().end, x.end);
    else
      out.push_back(x);
  }
  return out;
}

Ranges Intersect(const Ranges& a, const Ranges& b) {
  Ranges out;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    uint64_t s = std::max(a[i].start, b[j].start), e = std::min(a[i].end, b[j].end);
    if (s < e) out.push_back({s, e});
    if (a[i].end < b[j].end)
      i++;
    else
      j++;
  }
  return out;
}

Ranges Subtract(const Ranges& a, const Ranges& b) {
  Ranges out;
  size_t j = 0;
  for (Range x : a) {
    while (j < b.size() && b[j].end <= x.start) j++;
    for (size_t k = j; k < b.size() && b[k].start < x.end; k++) {
      if (b[k].start > x.start) out.push_back({x.start, b[k].start});
      x.start = std::max(x.start, b[k].end);
      if (x.start >= x.end) break;
    }
    if (x.start < x.end) out.push_back(x);
  }
  return out;
}

uint64_t RangeBytes(const Ranges& r) {
  uint64_t n = 0;
  for (const Range& x : r) n += x.end - x.start;
  return n;
}

std::string ImageFileId(const std::string& path) {
  ImageReader r(path);
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  RecordHeader h;
  uint64_t n = 0;
  while (r.NextHeader(h)) {
    XXH3_64bits_update(st, &h, sizeof h);
    r.SkipPayload();
    n++;
  }
  XXH3_64bits_update(st, &n, sizeof n);
  uint64_t id = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  char buf[32];
  snprintf(buf, sizeof buf, "xxh3:%016llx", (unsigned long long)id);
  return buf;
}

namespace {

nlohmann::json ReadHeaderJson(ImageReader& r) {
  Record rec;
  if (!r.Next(rec) || rec.type != RecordType::Header) throw ImageError(r.path() + ": no header record");
  try {
    return nlohmann::json::parse(rec.data.begin(), rec.data.end());
  } catch (const std::exception&) {
    throw ImageError(r.path() + ": malformed header record");
  }
}

std::optional<ParentRef> ParentOf(const nlohmann::json& h, const std::string& path) {
  if (!h.contains("parent") || h["parent"].is_null()) return std::nullopt;
  try {
    ParentRef p{h["parent"].at("image").get<std::string>(), h["parent"].at("id").get<std::string>()};
    if (p.image.empty() || p.image[0] == '/') throw std::runtime_error("");
    return p;
  } catch (const std::exception&) {
    throw ImageError(path + ": malformed parent in the header record");
  }
}

std::string DirOf(const std::string& path) {
  size_t s = path.rfind('/');
  return s == std::string::npos ? "." : path.substr(0, s);
}

// The pages an image stores and the ones it takes from its parent.
struct Level {
  Ranges stored, inherit;
  std::set<uint64_t> bounds;  // where its memory regions start and end
};

Level ScanLevel(const std::string& path) {
  Level l;
  ImageReader r(path);
  RecordHeader h;
  std::vector<uint8_t> buf;
  while (r.NextHeader(h)) {
    if (h.type == (uint32_t)RecordType::Pages) {
      l.stored.push_back({h.arg, h.arg + h.raw_len});
      r.SkipPayload();
    } else if (h.type == (uint32_t)RecordType::Inherit) {
      r.ReadPayload(buf);
      if (buf.size() % 16) throw ImageError(path + ": malformed inherit record");
      for (size_t o = 0; o < buf.size(); o += 16) {
        Range x;
        memcpy(&x.start, buf.data() + o, 8);
        memcpy(&x.end, buf.data() + o + 8, 8);
        if (x.start >= x.end || (x.start | x.end) % kPageSize) throw ImageError(path + ": malformed inherit record");
        l.inherit.push_back(x);
      }
    } else if (h.type == (uint32_t)RecordType::Vma) {
      r.ReadPayload(buf);
      if (buf.size() != sizeof(ibdbg_image_vma)) throw ImageError(path + ": memory region record of another format");
      ibdbg_image_vma v;
      memcpy(&v, buf.data(), sizeof v);
      l.bounds.insert(v.start);
      l.bounds.insert(v.end);
    } else {
      r.SkipPayload();
    }
  }
  l.stored = Normalize(std::move(l.stored));
  l.inherit = Normalize(std::move(l.inherit));
  return l;
}

// What each image of the chain gives the resolved image; *bounds: where the
// first image's regions start and end.
std::vector<Ranges> Resolve(const std::vector<std::string>& chain, std::set<uint64_t>* bounds = nullptr) {
  std::vector<Ranges> from;
  Ranges want;
  for (size_t k = 0; k < chain.size(); k++) {
    Level l = ScanLevel(chain[k]);
    if (k == 0 && bounds) *bounds = l.bounds;
    if (k == 0) {
      from.push_back(l.stored);
      want = Subtract(l.inherit, l.stored);
    } else {
      from.push_back(Intersect(want, l.stored));
      want = Subtract(Intersect(want, l.inherit), l.stored);
    }
  }
  return from;
}

}  // namespace

std::optional<ParentRef> ReadParentRef(const std::string& path) {
  ImageReader r(path);
  return ParentOf(ReadHeaderJson(r), path);
}

std::vector<std::string> ResolveChain(const std::string& path) {
  std::vector<std::string> chain = {path};
  std::set<std::string> seen;
  for (;;) {
    const std::string& cur = chain.back();
    char real[4096];
    if (realpath(cur.c_str(), real) && !seen.insert(real).second)
      throw ImageError(path + ": its chain of parent images loops at " + cur);
    auto ref = ReadParentRef(cur);
    if (!ref) return chain;
    std::string parent = DirOf(cur) + "/" + ref->image;
    // "images/ckpt-2/../ckpt-1/proc-N.img" reads better as "images/ckpt-1/proc-N.img".
    std::string base = DirOf(cur), rel = ref->image;
    while (rel.rfind("../", 0) == 0 && base.find('/') != std::string::npos && DirOf(base) != base) {
      base = DirOf(base);
      rel = rel.substr(3);
    }
    parent = base + "/" + rel;
    struct stat sb;
    if (stat(parent.c_str(), &sb) != 0)
      throw ImageError("parent image " + parent + " of " + cur + " is missing (an incremental image needs it)");
    std::string id;
    try {
      id = ImageFileId(parent);
    } catch (const std::exception& e) {
      throw ImageError("parent image " + parent + " of " + cur + " is damaged: " + e.what());
    }
    if (id != ref->id)
      throw ImageError("parent image " + parent + " of " + cur + " has changed since " + cur + " was written (" + id +
                       ", expected " + ref->id + ")");
    chain.push_back(parent);
  }
}

std::vector<uint64_t> ChainPageBytes(const std::vector<std::string>& chain) {
  std::vector<uint64_t> out;
  for (const Ranges& r : Resolve(chain)) out.push_back(RangeBytes(r));
  return out;
}

void FlattenChain(const std::vector<std::string>& chain, int out_fd, const WriterOptions& opts) {
  if (chain.empty()) throw ImageError("no image to flatten");
  std::set<uint64_t> bounds;
  std::vector<Ranges> from = Resolve(chain, &bounds);
  ImageWriter w(out_fd, opts);
  // A page record lies within one region, as a capture writes it (the
  // replay fills region by region); a parent's may span regions split since.
  auto add = [&](uint64_t start, uint64_t end, const uint8_t* p) {
    while (start < end) {
      auto b = bounds.upper_bound(start);
      uint64_t cut = b == bounds.end() ? end : std::min(end, *b);
      w.AddPages(start, p, cut - start);
      p += cut - start;
      start = cut;
    }
  };
  for (size_t k = 0; k < chain.size(); k++) {
    ImageReader r(chain[k]);
    const Ranges& use = from[k];
    RecordHeader h;
    std::vector<uint8_t> data;
    while (r.NextHeader(h)) {
      bool pages = h.type == (uint32_t)RecordType::Pages;
      if (k > 0 && !pages) {
        r.SkipPayload();
        continue;
      }
      if (pages) {
        Ranges mine = Intersect({{h.arg, h.arg + h.raw_len}}, use);
        if (mine.empty()) {
          r.SkipPayload();
          continue;
        }
        r.ReadPayload(data);
        if (data.size() != h.raw_len) throw ImageError(chain[k] + ": page record of the wrong length");
        for (const Range& x : mine) add(x.start, x.end, data.data() + (x.start - h.arg));
        continue;
      }
      if (h.type == (uint32_t)RecordType::Inherit || !IsKnownRecordType(h.type)) {
        r.SkipPayload();
        continue;
      }
      r.ReadPayload(data);
      if (h.type == (uint32_t)RecordType::Header) {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(data.begin(), data.end());
        } catch (const std::exception&) {
          throw ImageError(chain[k] + ": malformed header record");
        }
        j.erase("parent");
        j["flattened"] = chain.size();
        w.AddRecord(RecordType::Header, h.arg, j.dump());
        continue;
      }
      w.AddRecord((RecordType)h.type, h.arg, data.data(), data.size());
    }
  }
  w.Finish();
}

}  // namespace ibdbg::image
