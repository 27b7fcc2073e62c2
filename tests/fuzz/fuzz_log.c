/*  fuzz_log.c — libFuzzer target for the log-record reader.

    An auditor verifies and replays log files that come from elsewhere, so a
    record value is input like any other. The input is one record value as
    LMDB would hand it to `kim audit` (format, kind, time, hash, body): it
    must not crash the parser, the verifier (chain hash, checkpoint decode
    and signature), the JSON replay or the filters.
*/
#include <stdlib.h>
#include <string.h>

#include "kim/kim_log.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    static const uint8_t public_key [32] = { 0x3d, 0x40, 0x17, 0xc3 };
    kim_log_record_t record;
    int rc = kim_log_record_parse (5, data, size, &record);
    if (rc) {
        if (rc != -KIM_E_IO || (size >= KIM_LOG_RECORD_FIXED && data [0] == KIM_LOG_FORMAT))
            abort ();
        return 0;
    }
    if (record.seq != 5 || record.body_size != size - KIM_LOG_RECORD_FIXED
    ||  (record.body_size && record.body != data + KIM_LOG_RECORD_FIXED))
        abort ();

    //  Anchored at seq 5 on a zero hash: the chain check runs (and fails
    //  unless the hash is right); then trusting the record's own hash, so
    //  that a checkpoint body is decoded and its signature checked.
    uint8_t prev [KIM_HASH_SIZE] = { 0 };
    kim_log_verify_t verify;
    kim_log_verify_init (&verify, public_key, 5, prev);
    rc = kim_log_verify_step (&verify, &record);
    if (rc && (rc != -KIM_E_VERIFY_FAILED || !verify.failed
           ||  strnlen (verify.why, sizeof verify.why) >= sizeof verify.why))
        abort ();
    kim_log_verify_init (&verify, public_key, 5, NULL);
    rc = kim_log_verify_step (&verify, &record);
    if (rc && (rc != -KIM_E_VERIFY_FAILED || verify.bad_seq != 5))
        abort ();
    kim_log_verify_init (&verify, NULL, 5, NULL);
    kim_log_verify_step (&verify, &record);

    kim_buf_t buf;
    kim_buf_init (&buf);
    if (kim_log_record_to_json (&record, false, &buf) != 0
    ||  buf.size == 0 || buf.data [buf.size - 1] != '\n')
        abort ();
    kim_buf_reset (&buf);
    if (kim_log_record_to_json (&record, true, &buf) != 0)
        abort ();
    kim_buf_free (&buf);

    char text [KIM_ID_MAX + 1];
    if (kim_log_body_str (record.body, record.body_size, "case_id", text, sizeof text)
    &&  strnlen (text, sizeof text) >= sizeof text)
        abort ();
    kim_log_filter_t filter;
    memset (&filter, 0, sizeof filter);
    strcpy (filter.case_id, "c-1");
    strcpy (filter.org, "jc.rheine");
    strcpy (filter.type, "REFERRAL");
    filter.to_seq = 10;
    kim_log_filter_match (&filter, &record);
    return 0;
}
