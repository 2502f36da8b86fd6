#pragma once

// Incremental images (issue 7): a process image whose Header names a parent
// holds only the pages written since the parent was captured.  A page of
// such an image is, in this order:
//   - its own, if a Pages record holds it;
//   - the parent's (resolved the same way, up the chain), if an Inherit
//     record of the image lists it: present in the process and not written
//     since the parent;
//   - otherwise what a full image means by a page it does not hold (zero in
//     anonymous memory, the file's bytes in a private file mapping): a page
//     written with zeros, or dropped (MADV_DONTNEED), is neither stored nor
//     inherited.
// Every other record (threads, descriptors, regions) is the child's own; the
// parent only lends pages.  The Header's "parent" is {"image": path relative
// to the child's directory, "id": ImageFileId of the parent}: a parent that is
// missing or changed is refused, never read as something else.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ibdbg/image_file.h"

namespace ibdbg::image {

struct Range {
  uint64_t start = 0, end = 0;  // [start, end)
};
using Ranges = std::vector<Range>;

// Sorted, merged, empty ranges dropped.
Ranges Normalize(Ranges r);
// a and b normalized.
Ranges Intersect(const Ranges& a, const Ranges& b);
Ranges Subtract(const Ranges& a, const Ranges& b);
uint64_t RangeBytes(const Ranges& r);

// "xxh3:<16 hex>": XXH3-64 over every record header of the file (each holds
// its payload's hash) and the record count.  Reads headers only; throws
// ImageError on a damaged file.
std::string ImageFileId(const std::string& path);

struct ParentRef {
  std::string image;  // relative to the directory of the child image
  std::string id;     // ImageFileId of the parent when the child was written
};
// The Header's parent, if the image is incremental.  Throws ImageError.
std::optional<ParentRef> ReadParentRef(const std::string& path);

// The image and its ancestors: [path, parent, grandparent, ...], the last a
// full image.  Throws ImageError (one line) naming a parent that is missing,
// unreadable or changed.
std::vector<std::string> ResolveChain(const std::string& path);

// How many bytes of pages each image of a chain gives the resolved (full)
// image: result[i] for chain[i].
std::vector<uint64_t> ChainPageBytes(const std::vector<std::string>& chain);

// Writes the full image a chain resolves to: the first image's records with
// its Header's "parent" replaced by "flattened" (the chain's length), no
// Inherit records, and every page from where it resolves.  Throws ImageError.
void FlattenChain(const std::vector<std::string>& chain, int out_fd, const WriterOptions& opts = {});

}  // namespace ibdbg::image
