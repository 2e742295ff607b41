// Introspection of the kernel registries (what `mmkit info` lists).
#pragma once

#include <string>
#include <vector>

namespace mmkit {

/// One line per registered kernel, in dispatch order within each op family:
/// "family: name (cpu)" or "family: name (gpu)".
std::vector<std::string> registered_kernels();

}  // namespace mmkit
