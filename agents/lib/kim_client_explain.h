/*  kim_client_explain.h — library calls for kim's own tools beyond the
    public kim_client.h: each does what its public twin does and also says,
    in `why`, exactly what went wrong (which file, which mode, which
    endpoint), so a tool can print one precise line instead of a generic
    error. The public calls log the same text via zsys.
*/
#ifndef KIM_CLIENT_EXPLAIN_H_INCLUDED
#define KIM_CLIENT_EXPLAIN_H_INCLUDED

#include <stddef.h>

#include "kim/kim_client.h"

int
    kim_client_load_cert_explain (const char *path, char public_key [41], char secret_key [41],
                                  char *why, size_t why_size);
int
    kim_client_load_public_key_explain (const char *path, char public_key [41],
                                        char *why, size_t why_size);
kim_client_t *
    kim_client_new_explain (const kim_client_config_t *config, int *err,
                            char *why, size_t why_size);

#endif
