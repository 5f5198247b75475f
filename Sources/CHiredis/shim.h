#ifndef CONNPOOL_CHIREDIS_SHIM_H
#define CONNPOOL_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#endif
