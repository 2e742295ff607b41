// Umbrella header for the mmkit C++ API.
#pragma once

#include "mmkit/array.h"
#include "mmkit/cpu.h"
#include "mmkit/device.h"
#include "mmkit/dtype.h"
#include "mmkit/error.h"
#include "mmkit/io.h"
#include "mmkit/kernels.h"
#include "mmkit/matmul.h"
#include "mmkit/quantize.h"
#include "mmkit/version.h"
