/*  kim_citation.h — statute citations read as provisions, not as strings.

    A citation names one provision of one law, in any of the spellings
    German practice uses: "SGB X §71(2)3", "SGB X § 71 Abs. 2 Nr. 3",
    "§ 71 Abs. 2 Satz 1 Nr. 3 SGB X", "§71 abs.2 nr.3 sgb x" all name
    § 71 Abs. 2 Satz 1 Nr. 3 SGB X. The grammar is in PROTOCOL.md 9.5.

    The policy engine (kim_policy.c) parses a rule's citations when it
    compiles the policy (so `kim policy lint` names a citation it cannot
    read) and a message's citation when it decides (so the broker and
    `kim policy check` agree). A rule's citation accepts the provision it
    names and every narrower one in it; a broader citation is refused.
*/
#ifndef KIM_CITATION_H_INCLUDED
#define KIM_CITATION_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KIM_CITATION_LAW_MAX    32      //  bytes of a law's name ("SGB VIII", "AufenthG")
#define KIM_CITATION_TEXT_MAX   64      //  bytes of a citation's canonical form

typedef struct {
    bool article;                       //  "Art." (a regulation's article) rather than "§"
    char section [8];                   //  "71", "86c" (digits, then at most one letter)
    uint32_t paragraph;                 //  Abs. / (n); 0: not named
    uint32_t sentence;                  //  Satz / S.; 0: not named (1 when Nr./lit. follow)
    uint32_t number;                    //  Nr. (or a bare number after "(n)"); 0: not named
    char letter;                        //  lit. / Buchst.; 0: not named
    char law [KIM_CITATION_LAW_MAX + 1];    //  as written, words single-spaced
    char law_key [KIM_CITATION_LAW_MAX + 1];//  compared: upper case, no spaces or dots
} kim_citation_t;

//  Parses `text`. Returns 0, or -1 with `error` saying what it could not read.
int
    kim_citation_parse (const char *text, kim_citation_t *citation, char *error,
                        size_t error_size);

//  Whether a rule's citation `rule` accepts the message's citation `cited`:
//  the same provision, or one inside it (a sentence, number or letter of
//  it). 1 accepted, 0 not, -1 `cited` is broader than `rule` (a provision
//  that contains `rule` and more).
int
    kim_citation_covers (const kim_citation_t *rule, const kim_citation_t *cited);

//  The canonical form, e.g. "§ 71 Abs. 2 Nr. 3 SGB X" ("Satz 1" is left
//  out when a number or letter follows it). Returns `text`.
const char *
    kim_citation_format (const kim_citation_t *citation, char *text, size_t size);

void
    kim_citation_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
