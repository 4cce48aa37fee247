// BlockIO's shim declarations (ioctls, fallocate, O_DIRECT probing). Implementations in cvhost_blockio.c.
#ifndef CVHOST_BLOCKIO_H
#define CVHOST_BLOCKIO_H
#include <stdint.h>
#endif
