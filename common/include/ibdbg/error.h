#pragma once

#include <stdexcept>
#include <string>

namespace ibdbg {

// One exception type for everything that can go wrong with images on disk, so
// front ends can catch it, print what() as a single line and exit non-zero.
class ImageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "<what>: <strerror(err)>"; err defaults to the current errno.
std::string ErrnoMessage(const std::string& what, int err);
std::string ErrnoMessage(const std::string& what);

namespace image {
using ibdbg::ImageError;
}  // namespace image

}  // namespace ibdbg
