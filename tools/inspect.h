#pragma once

#include <string>

#include "ibdbg/error.h"

namespace ibdbg::tools {

// `ibdbg inspect IMAGE [--json]`: a description of an image for people (or,
// with as_json, for scripts; keys are stable). IMAGE may be anything
// image::ResolveImageDir accepts. Every record of every process is read and
// verified, so a damaged image is reported rather than half-described.
// Throws ImageError (one line) on any problem.
std::string InspectImage(const std::string& image, bool as_json);

// `ibdbg inspect IMAGE --verbs [--json]`: only each process's verbs state (the
// same objects and keys as InspectImage's "verbs"), with every record still
// verified.
std::string InspectVerbs(const std::string& image, bool as_json);

}  // namespace ibdbg::tools
