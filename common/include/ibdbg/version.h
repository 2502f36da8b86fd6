#pragma once

#define IBDBG_VERSION "0.1.0"
