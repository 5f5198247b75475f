// SwiftPM builds a C target from at least one source file; everything this target offers is declared
// in include/CConnPoolIO.h.
#include "CConnPoolIO.h"
