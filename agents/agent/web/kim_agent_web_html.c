/*  kim_agent_web_html.c — builds the staff page's HTML, escaping what is not ours.

    Everything that comes from outside the agent's own templates (ids,
    codes, organisation names, payloads, notes, query values) goes through
    kim_agent_html_text(), which escapes the five characters that matter in
    element content and quoted attributes. Templates only ever put such text
    inside elements or double-quoted attributes, never into URLs without
    a check, scripts or styles; so the escape is the whole defence, and the
    Content-Security-Policy (no scripts at all) is the second line.

    Also the texts in both languages and the one style sheet, chosen for
    WCAG 2.1 AA: every text colour has at least 4.5:1 contrast on its
    background, and focus is always visible.
*/
#include <stdarg.h>

#include <czmq.h>

#include "kim_agent_web.h"

static void
s_grow (kim_agent_html_t *self, size_t more)
{
    if (self->failed)
        return;
    if (self->size + more + 1 <= self->capacity)
        return;
    size_t capacity = self->capacity? self->capacity: 8192;
    while (capacity < self->size + more + 1)
        capacity *= 2;
    char *grown = (char *) realloc (self->data, capacity);
    if (!grown) {
        self->failed = true;
        return;
    }
    self->data = grown;
    self->capacity = capacity;
}

void
kim_agent_html_init (kim_agent_html_t *self)
{
    memset (self, 0, sizeof *self);
    s_grow (self, 8192);
    if (self->data)
        self->data [0] = 0;
}

void
kim_agent_html_free (kim_agent_html_t *self)
{
    free (self->data);
    memset (self, 0, sizeof *self);
}

static void
s_append (kim_agent_html_t *self, const char *data, size_t size)
{
    s_grow (self, size);
    if (self->failed)
        return;
    memcpy (self->data + self->size, data, size);
    self->size += size;
    self->data [self->size] = 0;
}

void
kim_agent_html_raw (kim_agent_html_t *self, const char *markup)
{
    s_append (self, markup, strlen (markup));
}

void
kim_agent_html_rawf (kim_agent_html_t *self, const char *format, ...)
{
    char small [1024];
    va_list args;
    va_start (args, format);
    int length = vsnprintf (small, sizeof small, format, args);
    va_end (args);
    if (length < 0) {
        self->failed = true;
        return;
    }
    if ((size_t) length < sizeof small) {
        s_append (self, small, (size_t) length);
        return;
    }
    char *large = (char *) malloc ((size_t) length + 1);
    if (!large) {
        self->failed = true;
        return;
    }
    va_start (args, format);
    vsnprintf (large, (size_t) length + 1, format, args);
    va_end (args);
    s_append (self, large, (size_t) length);
    free (large);
}

void
kim_agent_html_textn (kim_agent_html_t *self, const char *text, size_t size)
{
    const char *run = text;
    for (size_t i = 0; i < size; i++) {
        const char *entity = NULL;
        switch (text [i]) {
            case '&':  entity = "&amp;"; break;
            case '<':  entity = "&lt;"; break;
            case '>':  entity = "&gt;"; break;
            case '"':  entity = "&quot;"; break;
            case '\'': entity = "&#39;"; break;
            case 0:    entity = "\xEF\xBF\xBD"; break;  //  U+FFFD for a NUL
            default:   break;
        }
        if (entity) {
            s_append (self, run, (size_t) (text + i - run));
            s_append (self, entity, strlen (entity));
            run = text + i + 1;
        }
    }
    s_append (self, run, (size_t) (text + size - run));
}

void
kim_agent_html_text (kim_agent_html_t *self, const char *text)
{
    if (text)
        kim_agent_html_textn (self, text, strlen (text));
}

static const char *const s_texts [KIM_WEB_T_COUNT][2] = {
#define KIM_WEB_TEXT(key, de, en) { de, en },
#include "kim_agent_web_texts.h"
#undef KIM_WEB_TEXT
};

const char *
kim_agent_web_text (kim_agent_text_t key, int lang)
{
    if ((int) key < 0 || key >= KIM_WEB_T_COUNT)
        return "";
    return s_texts [key][lang == 1? 1: 0];
}

//  Colours: text #1a1a1a on #ffffff (17:1), links #0b4f8a (8.6:1), the
//  overdue mark #8a1c1c on #fdecec (7.6:1), muted #4a4a4a (8.9:1).
const char kim_agent_web_css [] =
    "*{box-sizing:border-box}\n"
    "html{font-family:system-ui,-apple-system,\"Segoe UI\",Roboto,\"DejaVu Sans\",sans-serif;"
    "font-size:100%;line-height:1.5;color:#1a1a1a;background:#fff}\n"
    "body{margin:0}\n"
    ".skip{position:absolute;left:-10000px;top:0}\n"
    ".skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem;z-index:10}\n"
    ".visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;"
    "clip:rect(0 0 0 0);white-space:nowrap}\n"
    "header{background:#0b3a63;color:#fff;padding:.75rem 1.5rem;display:flex;flex-wrap:wrap;"
    "gap:1rem;align-items:center;justify-content:space-between}\n"
    "header a,header button.link{color:#fff}\n"
    ".brand{font-weight:700;font-size:1.15rem;margin:0}\n"
    "nav ul{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:1.25rem}\n"
    "nav a[aria-current=page]{font-weight:700;text-decoration-thickness:3px}\n"
    ".who{display:flex;gap:.75rem;align-items:center;flex-wrap:wrap}\n"
    ".who form{margin:0}\n"
    "main{max-width:72rem;margin:0 auto;padding:1rem 1.5rem 3rem}\n"
    "h1{font-size:1.6rem;margin:.5rem 0 1rem}\n"
    "h2{font-size:1.25rem;margin:1.75rem 0 .5rem}\n"
    "a{color:#0b4f8a}\n"
    "a:focus,button:focus,input:focus,select:focus,textarea:focus,summary:focus"
    "{outline:3px solid #d97706;outline-offset:2px}\n"
    "table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}\n"
    "caption{text-align:left;font-weight:700;padding:.25rem 0}\n"
    "th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #c8c8c8;vertical-align:top}\n"
    "thead th{background:#eef2f6;border-bottom:2px solid #5a6b7b}\n"
    "tr.overdue td{background:#fdecec}\n"
    ".mark{display:inline-block;border-radius:.25rem;padding:0 .4rem;font-size:.9rem;"
    "font-weight:700;color:#8a1c1c;background:#fdecec;border:1px solid #8a1c1c}\n"
    ".state{font-weight:600}\n"
    ".muted{color:#4a4a4a}\n"
    "dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1.25rem}\n"
    "dl.facts dt{font-weight:700}\n"
    "dl.facts dd{margin:0}\n"
    "pre.payload{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;"
    "border:1px solid #c8c8c8;padding:.75rem;font-size:.95rem}\n"
    ".notice{border-left:6px solid #1f6f3a;background:#eaf6ee;padding:.6rem 1rem;margin:1rem 0}\n"
    ".error{border-left:6px solid #8a1c1c;background:#fdecec;padding:.6rem 1rem;margin:1rem 0}\n"
    ".answers{display:grid;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr));gap:1rem}\n"
    "fieldset{border:1px solid #8a8a8a;border-radius:.35rem;padding:.75rem 1rem 1rem;margin:0}\n"
    "legend{font-weight:700;padding:0 .35rem}\n"
    "label{display:block;font-weight:600;margin:.6rem 0 .2rem}\n"
    "label.inline{display:inline;font-weight:400;margin:0 1rem 0 .3rem}\n"
    "input[type=text],input[type=password],input[type=date],select,textarea{width:100%;"
    "max-width:32rem;font:inherit;padding:.4rem .5rem;border:1px solid #5a5a5a;border-radius:.25rem;"
    "background:#fff;color:#1a1a1a}\n"
    "textarea{min-height:8rem;display:block}\n"
    ".hint{color:#4a4a4a;font-size:.92rem;margin:.2rem 0}\n"
    "button{font:inherit;margin-top:.8rem;padding:.45rem 1.1rem;border-radius:.3rem;"
    "border:1px solid #0b3a63;background:#0b3a63;color:#fff;cursor:pointer}\n"
    "button.secondary{background:#fff;color:#0b3a63}\n"
    "header button{margin:0;background:transparent;border:1px solid #fff;color:#fff;padding:.25rem .8rem}\n"
    ".login{max-width:26rem}\n"
    "footer{max-width:72rem;margin:0 auto;padding:0 1.5rem 2rem;color:#4a4a4a;font-size:.9rem}\n";
