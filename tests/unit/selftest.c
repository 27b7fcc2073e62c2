/*  selftest.c — runs one module's self-test by name, for CTest. */
#include <stdio.h>
#include <string.h>

#include "kim/kim_msg.h"
#include "kim_config.h"
#include "kim_store.h"
#include "kim_journal.h"
#include "kim/kim_log.h"
#include "kim_audit.h"
#include "kim_lifecycle.h"
#include "kim/kim_policy.h"
#include "kim/kim_citation.h"
#include "kim_consent.h"
#include "kim_directory.h"
#include "kim_link.h"
#include "kim_work.h"

typedef struct {
    const char *name;
    void (*test) (bool verbose);
} selftest_t;

static const selftest_t s_tests [] = {
    { "log", kim_log_test },
    { "directory", kim_directory_test },
    { "link", kim_link_test },
    { "audit", kim_audit_test },
    { "msg", kim_msg_test },
    { "store", kim_store_test },
    { "journal", kim_journal_test },
    { "store_journal", kim_store_journal_test },
    { "work", kim_work_test },
    { "config", kim_config_test },
    { "lifecycle", kim_lifecycle_test },
    { "policy", kim_policy_test },
    { "citation", kim_citation_test },
    { "consent", kim_consent_test },
};

int
main (int argc, char *argv [])
{
    bool verbose = argc > 2 && strcmp (argv [2], "-v") == 0;
    for (size_t i = 0; i < sizeof s_tests / sizeof s_tests [0]; i++)
        if (argc < 2 || strcmp (argv [1], s_tests [i].name) == 0) {
            printf ("self-test %s...\n", s_tests [i].name);
            s_tests [i].test (verbose);
            printf ("self-test %s: OK\n", s_tests [i].name);
        }
    return 0;
}
