/*  kim_error.h — the one error table of kim.

    Every failure in kim has one code. The same number travels on the wire as a
    REJECT's reason code, is returned by library calls (negated: -KIM_E_...),
    and is listed in proto/PROTOCOL.md. The table below generates the enum,
    kim_strerror() and kim_errname(), so C, wire and docs cannot disagree.

    Ranges: 1xx malformed input, 2xx session and identity, 3xx store and
    limits, 4xx referral life cycle and cases, 5xx policy and consent,
    6xx audit, 9xx local failures (never sent on the wire).
*/
#ifndef KIM_ERROR_H_INCLUDED
#define KIM_ERROR_H_INCLUDED

#ifdef __cplusplus
extern "C" {
#endif

#define KIM_ERRORS(X)                                                                  \
    X(OK,                 0, "success")                                                \
    /* 1xx: the bytes are not a valid command */                                       \
    X(MALFORMED,        100, "not a valid MessagePack command")                        \
    X(BAD_TYPE,         101, "field has the wrong MessagePack type")                   \
    X(MISSING_FIELD,    102, "required field is missing")                              \
    X(TOO_LONG,         103, "string or binary field exceeds its length limit")        \
    X(BAD_UTF8,         104, "text field is not valid UTF-8")                          \
    X(BAD_ID,           105, "identifier does not match its format")                   \
    X(TOO_MANY,         106, "array or map has too many entries")                      \
    X(TOO_DEEP,         107, "nesting exceeds the allowed depth")                      \
    X(UNKNOWN_CMD,      108, "unknown command")                                        \
    X(UNKNOWN_TYPE,     109, "unknown message type")                                   \
    X(BAD_VALUE,        110, "field value is not allowed here")                        \
    X(UNKNOWN_FIELD,    111, "unknown field")                                          \
    X(TOO_LARGE,        112, "frame exceeds the size limit")                           \
    X(BAD_FRAMES,       113, "wrong number of frames for this command")                \
    X(DUPLICATE_FIELD,  114, "field appears more than once")                           \
    /* 2xx: session, identity and roles */                                             \
    X(NO_SESSION,       200, "command sent before HELLO")                              \
    X(VERSION,          201, "no protocol version in common")                          \
    X(UNKNOWN_ORG,      202, "the authenticated key belongs to no registered organisation") \
    X(UNKNOWN_RECIPIENT,203, "recipient is not a registered organisation")             \
    X(SENDER_MISMATCH,  204, "sender field differs from the authenticated organisation") \
    X(FORBIDDEN,        205, "the organisation's role does not permit this command")   \
    X(REPLACED,         206, "session replaced by a newer session of the organisation")\
    X(RATE_LIMITED,     207, "too many commands; slow down")                           \
    X(BAD_ACK,          208, "acknowledged sequence number is not in flight")          \
    X(SESSION_EXPIRED,  209, "session expired after missed heartbeats")                \
    X(REVOKED,          210, "the organisation's key was revoked")                     \
    X(BAD_SIGNATURE,    211, "sender signature does not verify")                       \
    X(STALE,            212, "message is too old or too far in the future")           \
    X(RELOAD_FAILED,    213, "the registry file is invalid; nothing changed")          \
    /* 3xx: store and limits */                                                        \
    X(QUOTA,            300, "recipient mailbox is full")                              \
    X(STORE_FULL,       301, "store has reached its maximum size")                     \
    X(STORE_FAILED,     302, "store failed and refuses writes until restarted")        \
    X(INTERNAL,         303, "internal broker error")                                  \
    X(BUSY,             304, "broker is shutting down or overloaded")                  \
    X(ORG_LIMIT,        305, "the organisation has reached one of its limits")         \
    /* 4xx: referral life cycle and cases */                                           \
    X(BAD_STATE,        400, "not allowed in the referral's current state")            \
    X(NOT_PARTY,        401, "sender takes no part in this referral or case")          \
    X(UNKNOWN_REFERRAL, 402, "unknown referral")                                       \
    X(UNKNOWN_CASE,     403, "unknown case")                                           \
    X(REFERRAL_EXISTS,  404, "a referral with this id exists already")                 \
    X(NOT_LEAD,         405, "sender is not the case's lead organisation")             \
    /* 5xx: policy and consent */                                                      \
    X(POLICY_DENY,      500, "policy denies this transfer")                            \
    X(NO_BASIS,         501, "transfer lacks the legal basis its rule requires")       \
    X(CONSENT_UNKNOWN,  502, "consent is not registered")                              \
    X(CONSENT_REVOKED,  503, "consent was revoked")                                    \
    X(CONSENT_SCOPE,    504, "consent does not cover this transfer")                   \
    X(CONSENT_EXPIRED,  505, "consent has expired")                                    \
    X(CONSENT_BOUND,    506, "consent is bound to another subject, case or organisation") \
    /* 6xx: audit */                                                                   \
    X(VERIFY_FAILED,    600, "log verification failed")                                \
    /* 9xx: local failures, never on the wire */                                       \
    X(NOMEM,            900, "out of memory")                                          \
    X(IO,               901, "input/output error")                                     \
    X(CONFIG,           902, "invalid configuration")                                  \
    X(TIMEOUT,          903, "timed out")                                              \
    X(CLOSED,           904, "connection closed")                                      \
    X(NOT_FOUND,        905, "not found")                                              \
    X(KEY,              906, "key missing, unreadable or insecure")                    \
    X(ARGS,             907, "invalid arguments")

typedef enum {
#define KIM_X_ENUM(name, code, text) KIM_E_##name = code,
    KIM_ERRORS(KIM_X_ENUM)
#undef KIM_X_ENUM
} kim_error_t;

//  Human-readable message for a code (positive or negated). Never NULL.
const char *
    kim_strerror (int code);

//  Symbolic name without prefix ("QUOTA"), or "UNKNOWN". Never NULL.
const char *
    kim_errname (int code);

//  Code for a symbolic name, or -1 when the name is unknown.
int
    kim_errcode (const char *name);

#ifdef __cplusplus
}
#endif

#endif
