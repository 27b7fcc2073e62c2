/*  kim_json.h — a message as agency systems write it for kim's tools: one
    JSON object, the header's fields (as kim_msg_from_json reads them) and
    the payload beside them as "payload" (text) or "payload_base64". Serves
    `kim send --json` and kim-agent; applications see only include/kim/.
*/
#ifndef KIM_JSON_H_INCLUDED
#define KIM_JSON_H_INCLUDED

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "kim/kim_msg.h"

//  Reads `root` (left as it was) into `msg` and a malloc'd `*payload` (NULL
//  when there is none; the caller frees it). Returns 0, or a negative kim
//  error with a sentence in `why` and the offending field in `path`.
int
    kim_json_message (json_t *root, kim_msg_t *msg, uint8_t **payload, size_t *payload_size,
                      char *why, size_t why_size, char *path, size_t path_size);

#endif
