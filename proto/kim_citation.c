/*  kim_citation.c — reads a statute citation into the provision it names
    (law, § or Art., paragraph, sentence, number, letter), so that the
    policy compares provisions, not spellings. The grammar is written down
    in PROTOCOL.md 9.5; the self-test below reads it in many spellings.

    Pure code, no allocation: a scanner of tokens and a small parser.
*/
#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "kim/kim_citation.h"

#define S_NUMBER_MAX    9999

typedef enum {
    S_END, S_SECTION, S_ARTICLE, S_PARA, S_SENTENCE, S_NUM, S_LIT, S_OPEN, S_CLOSE,
    S_NUMBER, S_WORD
} s_kind_t;

typedef struct {
    s_kind_t kind;
    const char *start;
    size_t size;                //  of a word, without a trailing dot
    uint32_t value;             //  of a number
    char suffix;                //  a letter right after a number ("86c"), lower case
} s_token_t;

typedef struct {
    const char *at;
    char *error;
    size_t error_size;
} s_scanner_t;

static int
s_fail (s_scanner_t *scanner, const char *format, const char *detail)
{
    snprintf (scanner->error, scanner->error_size, format, detail);
    return -1;
}

static bool
s_word_is (const s_token_t *token, const char *word)
{
    return token->size == strlen (word) && strncasecmp (token->start, word, token->size) == 0;
}

//  A letter of a word at `at`: ASCII, or a UTF-8 byte of a non-ASCII
//  letter (Umlaute); not the bytes of § or of the no-break space.
static bool
s_letter (const unsigned char *at)
{
    if (at [0] == 0xc2 && (at [1] == 0xa7 || at [1] == 0xa0))
        return false;
    return isalpha (at [0]) || at [0] >= 0x80;
}

//  Reads the next token. 0, or -1 with the error set.
static int
s_next (s_scanner_t *scanner, s_token_t *token)
{
    const unsigned char *at = (const unsigned char *) scanner->at;
    while (*at == ' ' || *at == '\t' || (at [0] == 0xc2 && at [1] == 0xa0))
        at += *at == 0xc2? 2: 1;
    memset (token, 0, sizeof *token);
    token->start = (const char *) at;
    if (*at == 0)
        token->kind = S_END;
    else
    if (at [0] == 0xc2 && at [1] == 0xa7) {
        if (at [2] == 0xc2 && at [3] == 0xa7)
            return s_fail (scanner, "%s", "'§§' (several provisions): cite one provision");
        token->kind = S_SECTION;
        at += 2;
    }
    else
    if (*at == '(' || *at == ')') {
        token->kind = *at == '('? S_OPEN: S_CLOSE;
        at++;
    }
    else
    if (isdigit (*at)) {
        uint32_t value = 0;
        while (isdigit (*at)) {
            value = value * 10 + (uint32_t) (*at++ - '0');
            if (value > S_NUMBER_MAX)
                return s_fail (scanner, "%s", "a number above 9999");
        }
        if (isalpha (at [0]) && !s_letter (at + 1))
            token->suffix = (char) tolower (*at++);
        token->kind = S_NUMBER;
        token->value = value;
    }
    else
    if (s_letter (at)) {
        while (s_letter (at))
            at++;
        token->size = (size_t) ((const char *) at - token->start);
        bool dot = *at == '.';
        if (dot)
            at++;
        token->kind = S_WORD;
        if (s_word_is (token, "Art") || s_word_is (token, "Artikel"))
            token->kind = S_ARTICLE;
        else
        if (s_word_is (token, "Abs") || s_word_is (token, "Absatz"))
            token->kind = S_PARA;
        else
        if (s_word_is (token, "Satz") || (dot && s_word_is (token, "S")))
            token->kind = S_SENTENCE;
        else
        if (s_word_is (token, "Nr") || s_word_is (token, "Nummer"))
            token->kind = S_NUM;
        else
        if (s_word_is (token, "lit") || s_word_is (token, "Buchst") || s_word_is (token, "Buchstabe"))
            token->kind = S_LIT;
        else
        if (dot && (s_word_is (token, "f") || s_word_is (token, "ff")))
            return s_fail (scanner, "%s", "'f.' or 'ff.' (and following): cite one provision");
        else
        if (dot && *at && *at != ' ')
            return s_fail (scanner, "%s", "an abbreviation such as i.V.m. is not read: cite one "
                           "provision");
    }
    else {
        char what [8];
        snprintf (what, sizeof what, "%c", *at);
        return s_fail (scanner, "unexpected '%s'", what);
    }
    scanner->at = (const char *) at;
    return 0;
}

//  Appends a law word to the citation's law (display and key).
static int
s_law_word (s_scanner_t *scanner, kim_citation_t *citation, const s_token_t *token)
{
    size_t used = strlen (citation->law), key_used = strlen (citation->law_key);
    if (used + token->size + 1 > KIM_CITATION_LAW_MAX)
        return s_fail (scanner, "%s", "the law's name is too long");
    if (used)
        citation->law [used++] = ' ';
    memcpy (citation->law + used, token->start, token->size);
    citation->law [used + token->size] = 0;
    for (size_t i = 0; i < token->size; i++)
        citation->law_key [key_used++] = (char) toupper ((unsigned char) token->start [i]);
    citation->law_key [key_used] = 0;
    return 0;
}

//  A number token after a keyword: 1..9999, no letter suffix.
static int
s_expect_number (s_scanner_t *scanner, const char *what, uint32_t *value)
{
    s_token_t token;
    if (s_next (scanner, &token))
        return -1;
    if (token.kind != S_NUMBER || token.suffix || token.value == 0)
        return s_fail (scanner, "%s: expected a number after it", what);
    *value = token.value;
    return 0;
}

int
kim_citation_parse (const char *text, kim_citation_t *citation, char *error, size_t error_size)
{
    memset (citation, 0, sizeof *citation);
    s_scanner_t scanner = { text? text: "", error, error_size };
    s_token_t token;
    //  The law may come first: "SGB X § 71 ...".
    while (true) {
        if (s_next (&scanner, &token))
            return -1;
        if (token.kind != S_WORD)
            break;
        if (s_law_word (&scanner, citation, &token))
            return -1;
    }
    bool law_before = citation->law [0] != 0;
    if (token.kind != S_SECTION && token.kind != S_ARTICLE)
        return s_fail (&scanner, "%s", "expected '§' or 'Art.' and the provision's number");
    citation->article = token.kind == S_ARTICLE;
    if (s_next (&scanner, &token))
        return -1;
    if (token.kind != S_NUMBER || token.value == 0)
        return s_fail (&scanner, "%s", "expected the number of the § or article");
    snprintf (citation->section, sizeof citation->section, "%u", (unsigned) (token.value % 10000));
    if (token.suffix)
        citation->section [strlen (citation->section)] = token.suffix;
    //  Subdivisions, each at most once and in order: Abs., Satz, Nr., lit.
    int level = 0;
    bool parenthesis = false;
    while (true) {
        if (s_next (&scanner, &token))
            return -1;
        if (token.kind == S_END || token.kind == S_WORD)
            break;
        int next_level = token.kind == S_OPEN || token.kind == S_PARA? 1
                       : token.kind == S_SENTENCE? 2
                       : token.kind == S_NUM || (token.kind == S_NUMBER && parenthesis && level == 1)? 3
                       : token.kind == S_LIT? 4: 0;
        if (next_level == 0)
            return s_fail (&scanner, "%s", token.kind == S_NUMBER
                           ? "a bare number: say Abs., Satz or Nr. (only '(2)3' reads as Abs. 2 Nr. 3)"
                           : "unexpected ')', '§' or 'Art.' after the provision");
        if (next_level <= level)
            return s_fail (&scanner, "%s", "subdivisions go Abs., Satz, Nr., lit., each once");
        level = next_level;
        if (token.kind == S_OPEN) {
            if (s_expect_number (&scanner, "'('", &citation->paragraph)
            ||  s_next (&scanner, &token))
                return -1;
            if (token.kind != S_CLOSE)
                return s_fail (&scanner, "%s", "expected ')' after the paragraph's number");
            parenthesis = true;
        }
        else
        if (token.kind == S_NUMBER) {
            if (token.suffix || token.value == 0)
                return s_fail (&scanner, "%s", "a number with a letter after '(n)'");
            citation->number = token.value;
        }
        else
        if (token.kind == S_PARA) {
            if (s_expect_number (&scanner, "Abs.", &citation->paragraph))
                return -1;
        }
        else
        if (token.kind == S_SENTENCE) {
            if (s_expect_number (&scanner, "Satz", &citation->sentence))
                return -1;
        }
        else
        if (token.kind == S_NUM) {
            if (s_expect_number (&scanner, "Nr.", &citation->number))
                return -1;
        }
        else {
            if (s_next (&scanner, &token))
                return -1;
            if (token.kind != S_WORD || token.size != 1 || !isalpha ((unsigned char) token.start [0]))
                return s_fail (&scanner, "%s", "lit.: expected one letter after it");
            citation->letter = (char) tolower ((unsigned char) token.start [0]);
        }
    }
    //  ... or last: "§ 71 Abs. 2 Nr. 3 SGB X".
    if (token.kind == S_WORD) {
        if (law_before)
            return s_fail (&scanner, "%s", "the law is named twice (before and after the provision)");
        while (token.kind == S_WORD || (token.kind == S_NUMBER && citation->law [0])) {
            if (token.kind == S_NUMBER) {
                //  "SGB 2": a number as part of the law's name.
                char digits [16];
                snprintf (digits, sizeof digits, "%u", (unsigned) token.value);
                token.start = digits;
                token.size = strlen (digits);
                if (s_law_word (&scanner, citation, &token))
                    return -1;
            }
            else
            if (s_law_word (&scanner, citation, &token))
                return -1;
            if (s_next (&scanner, &token))
                return -1;
        }
        if (token.kind != S_END)
            return s_fail (&scanner, "%s", "text after the law's name");
    }
    if (!citation->law [0])
        return s_fail (&scanner, "%s", "no law named (for example 'SGB X' or 'AufenthG')");
    //  "Nr. 3" of a paragraph means its first sentence unless another is named.
    if ((citation->number || citation->letter) && !citation->sentence)
        citation->sentence = 1;
    return 0;
}

int
kim_citation_covers (const kim_citation_t *rule, const kim_citation_t *cited)
{
    if (rule->article != cited->article || strcmp (rule->section, cited->section) != 0
    ||  strcmp (rule->law_key, cited->law_key) != 0)
        return 0;
    uint32_t ruled [4] = { rule->paragraph, rule->sentence, rule->number, (uint32_t) rule->letter };
    uint32_t named [4] = { cited->paragraph, cited->sentence, cited->number,
                           (uint32_t) cited->letter };
    bool broader = false;
    for (int level = 0; level < 4; level++) {
        if (!ruled [level])
            continue;               //  the rule accepts any subdivision here
        if (!named [level])
            broader = true;         //  the citation names more than the rule
        else
        if (named [level] != ruled [level])
            return 0;
    }
    return broader? -1: 1;
}

const char *
kim_citation_format (const kim_citation_t *citation, char *text, size_t size)
{
    int used = snprintf (text, size, "%s %s", citation->article? "Art.": "§", citation->section);
    if (used >= 0 && citation->paragraph && (size_t) used < size)
        used += snprintf (text + used, size - (size_t) used, " Abs. %u",
                          (unsigned) citation->paragraph);
    bool implied = citation->sentence == 1 && (citation->number || citation->letter);
    if (used >= 0 && citation->sentence && !implied && (size_t) used < size)
        used += snprintf (text + used, size - (size_t) used, " Satz %u",
                          (unsigned) citation->sentence);
    if (used >= 0 && citation->number && (size_t) used < size)
        used += snprintf (text + used, size - (size_t) used, " Nr. %u", (unsigned) citation->number);
    if (used >= 0 && citation->letter && (size_t) used < size)
        used += snprintf (text + used, size - (size_t) used, " lit. %c", citation->letter);
    if (used >= 0 && (size_t) used < size)
        snprintf (text + used, size - (size_t) used, " %s", citation->law);
    return text;
}

//  --------------------------------------------------------------------------
//  Self-test: spellings that name the same provision, and what is refused

typedef struct {
    const char *text;
    const char *canonical;          //  NULL: refused, `error` contains `why`
    const char *why;
} s_spelling_t;

static const s_spelling_t s_spellings [] = {
    //  § 71 Abs. 2 Satz 1 Nr. 3 SGB X, as the issue and practice write it
    { "SGB X §71(2)3", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "SGB X § 71 Abs. 2 Nr. 3", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "§ 71 Abs. 2 Satz 1 Nr. 3 SGB X", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "§ 71 Abs. 2 S. 1 Nr. 3 SGB X", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "§71 Abs.2 Nr.3 SGB X", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "  SGB   X   §   71 ( 2 ) 3  ", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "sgb x §71(2)3", "§ 71 Abs. 2 Nr. 3 sgb x", NULL },
    { "§ 71 abs. 2 nr. 3 sgb x", "§ 71 Abs. 2 Nr. 3 sgb x", NULL },
    { "§ 71 Absatz 2 Satz 1 Nummer 3 SGB X", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "§ 71 (2) Nr. 3 SGB X", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "SGB X § 71 (2) S. 1 Nr. 3", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "§\xc2\xa0" "71 Abs.\xc2\xa0" "2 Nr. 3 SGB\xc2\xa0X", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    { "\t§ 71 Abs 2 Nr 3 SGB X", "§ 71 Abs. 2 Nr. 3 SGB X", NULL },
    //  other provisions of the shipped policy
    { "SGB X §71(2)", "§ 71 Abs. 2 SGB X", NULL },
    { "§ 71 Abs. 2 Satz 2 SGB X", "§ 71 Abs. 2 Satz 2 SGB X", NULL },
    { "SGB X §69(1)1", "§ 69 Abs. 1 Nr. 1 SGB X", NULL },
    { "§ 69 Abs. 1 Nr. 1 SGB X", "§ 69 Abs. 1 Nr. 1 SGB X", NULL },
    { "SGB VIII §65(1)2", "§ 65 Abs. 1 Nr. 2 SGB VIII", NULL },
    { "§ 65 Abs. 1 Satz 1 Nr. 2 SGB VIII", "§ 65 Abs. 1 Nr. 2 SGB VIII", NULL },
    { "SGB VIII §86c(2)", "§ 86c Abs. 2 SGB VIII", NULL },
    { "§ 86c Abs. 2 SGB VIII", "§ 86c Abs. 2 SGB VIII", NULL },
    { "§ 86C Abs. 2 SGB VIII", "§ 86c Abs. 2 SGB VIII", NULL },
    { "AufenthG §87(1)", "§ 87 Abs. 1 AufenthG", NULL },
    { "§ 87 Abs. 1 AufenthG", "§ 87 Abs. 1 AufenthG", NULL },
    { "§ 87 Abs. 2 AufenthG", "§ 87 Abs. 2 AufenthG", NULL },
    { "AufenthG §86", "§ 86 AufenthG", NULL },
    { "AufenthV §72", "§ 72 AufenthV", NULL },
    { "IntV §8(4)", "§ 8 Abs. 4 IntV", NULL },
    { "§ 8 Abs. 4 IntV", "§ 8 Abs. 4 IntV", NULL },
    { "Art. 6 Abs. 1 lit. a DSGVO", "Art. 6 Abs. 1 lit. a DSGVO", NULL },
    { "DSGVO Art. 6 (1) lit. a", "Art. 6 Abs. 1 lit. a DSGVO", NULL },
    { "Artikel 9 Absatz 2 Buchstabe a DSGVO", "Art. 9 Abs. 2 lit. a DSGVO", NULL },
    { "Art. 9 Abs. 2 Buchst. A DSGVO", "Art. 9 Abs. 2 lit. a DSGVO", NULL },
    { "§ 203 StGB", "§ 203 StGB", NULL },
    { "§ 35 Satz 2 SGB I", "§ 35 Satz 2 SGB I", NULL },
    { "§ 7 SGB 2", "§ 7 SGB 2", NULL },
    //  refused, with a reason
    { "", NULL, "expected '§' or 'Art.'" },
    { "SGB X", NULL, "expected '§' or 'Art.'" },
    { "§ 71 Abs. 2", NULL, "no law named" },
    { "§§ 67 ff. SGB X", NULL, "'§§'" },
    { "SGB X § 71 Abs. 2 SGB X", NULL, "named twice" },
    { "§ 71 Nr. 3 Abs. 2 SGB X", NULL, "each once" },
    { "§ 71 Abs. 2 Abs. 3 SGB X", NULL, "each once" },
    { "§ 71 Abs. SGB X", NULL, "expected a number" },
    { "§ 71 (2 SGB X", NULL, "expected ')'" },
    { "§ 71 Abs. 2 3 SGB X", NULL, "bare number" },
    { "§ 71 Abs. 2 lit. ab SGB X", NULL, "one letter" },
    { "§ 99999 SGB X", NULL, "above 9999" },
    { "§ 71 Abs. 2 SGB X; § 87 AufenthG", NULL, "unexpected ';'" },
    { "§ 1 i.V.m. § 2 SGB X", NULL, "not read" },
    { "§ 71 (2) ff. SGB X", NULL, "and following" },
    { "§ 0 SGB X", NULL, "expected the number" },
};

typedef struct {
    const char *rule;
    const char *cited;
    int covers;
} s_cover_t;

static const s_cover_t s_covers [] = {
    { "SGB X §71(2)3", "§ 71 Abs. 2 Satz 1 Nr. 3 SGB X", 1 },
    { "SGB X §71(2)3", "sgb x §71 (2) 3", 1 },
    { "SGB X §71(2)3", "SGB X §71(2)2", 0 },
    { "SGB X §71(2)3", "SGB X §71(2)", -1 },            //  broader than the rule
    { "SGB X §71(2)3", "§ 71 Abs. 2 Satz 1 SGB X", -1 },
    { "SGB X §71(2)3", "§ 71 Abs. 2 Satz 2 SGB X", 0 },
    { "SGB X §71(2)3", "§ 71 SGB X", -1 },
    { "SGB X §71(2)3", "§ 71 Abs. 2 Nr. 3 SGB VIII", 0 },
    { "SGB X §71(2)3", "§ 72 Abs. 2 Nr. 3 SGB X", 0 },
    { "SGB X §71(2)3", "Art. 71 Abs. 2 Nr. 3 SGB X", 0 },
    { "SGB X §71(2)", "§ 71 Abs. 2 Nr. 4 SGB X", 1 },  //  narrower than the rule
    { "AufenthG §86", "§ 86 Abs. 1 AufenthG", 1 },
    { "SGB VIII §86c(2)", "§ 86C Abs. 2 SGB VIII", 1 },
    { "SGB VIII §86c(2)", "§ 86 Abs. 2 SGB VIII", 0 },
    { "Art. 6 Abs. 1 lit. a DSGVO", "DSGVO Art. 6 (1) lit. a", 1 },
    { "Art. 6 Abs. 1 lit. a DSGVO", "Art. 6 Abs. 1 lit. e DSGVO", 0 },
};

void
kim_citation_test (bool verbose)
{
    size_t count = sizeof s_spellings / sizeof s_spellings [0];
    assert (count >= 40);
    for (size_t i = 0; i < count; i++) {
        const s_spelling_t *spelling = &s_spellings [i];
        kim_citation_t citation;
        char error [128] = "", text [KIM_CITATION_TEXT_MAX + KIM_CITATION_LAW_MAX];
        int rc = kim_citation_parse (spelling->text, &citation, error, sizeof error);
        if (rc == 0)
            kim_citation_format (&citation, text, sizeof text);
        bool pass = spelling->canonical
                  ? rc == 0 && strcmp (text, spelling->canonical) == 0
                  : rc == -1 && strstr (error, spelling->why) != NULL;
        if (verbose || !pass)
            printf ("  %s '%s' -> %s\n", pass? "ok": "FAIL", spelling->text, rc? error: text);
        assert (pass);
    }
    for (size_t i = 0; i < sizeof s_covers / sizeof s_covers [0]; i++) {
        kim_citation_t rule, cited;
        char error [128];
        assert (kim_citation_parse (s_covers [i].rule, &rule, error, sizeof error) == 0);
        assert (kim_citation_parse (s_covers [i].cited, &cited, error, sizeof error) == 0);
        int covers = kim_citation_covers (&rule, &cited);
        if (verbose || covers != s_covers [i].covers)
            printf ("  %s: rule '%s' covers '%s': %d\n", covers == s_covers [i].covers? "ok": "FAIL",
                    s_covers [i].rule, s_covers [i].cited, covers);
        assert (covers == s_covers [i].covers);
    }
    if (verbose)
        printf ("  citation: %zu spellings, %zu comparisons\n", count,
                sizeof s_covers / sizeof s_covers [0]);
}
