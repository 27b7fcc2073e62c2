/*  kim_client_cert.c — reading the key files a client needs: its CURVE
    certificate (ZPL, as zcert and `kim keygen` write it), the broker's
    public certificate, and the Ed25519 signing key.

    Kept apart from the session because none of it needs a client: it runs
    before there is one. It refuses a secret file that group or others may
    read and a public key that does not belong to its secret, with a
    sentence naming the file and the fix, because a wrong key otherwise
    shows only as a HELLO the broker never answers. Secrets it reads are
    wiped before their memory is freed.
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>
#include <sodium.h>

#include "kim_client_explain.h"
#include "kim_client_int.h"

#define S_CERT_MAX              65536   //  a certificate file larger than this is not one

//  Reads a ZPL file; when must_be_private, refuses one that group or others
//  may access (a secret key anyone on the host can read is no secret).
static zconfig_t *
s_load_zpl (const char *path, bool must_be_private, char *why, size_t why_size)
{
    if (!path || !*path) {
        kim_client_i_why (why, why_size, "no certificate file given");
        return NULL;
    }
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        kim_client_i_why (why, why_size, "cannot open %s: %s", path, strerror (errno));
        return NULL;
    }
    struct stat st;
    if (fstat (fd, &st) == -1) {
        kim_client_i_why (why, why_size, "cannot stat %s: %s", path, strerror (errno));
        close (fd);
        return NULL;
    }
    if (!S_ISREG (st.st_mode)) {
        kim_client_i_why (why, why_size, "%s is not a regular file", path);
        close (fd);
        return NULL;
    }
    if (must_be_private && (st.st_mode & (S_IRWXG | S_IRWXO))) {
        kim_client_i_why (why, why_size, "%s holds a secret key but is accessible by group or "
                          "others (mode %04o): run chmod 600 %s",
                          path, (unsigned) (st.st_mode & 07777), path);
        close (fd);
        return NULL;
    }
    if (st.st_size > S_CERT_MAX) {
        kim_client_i_why (why, why_size, "%s is too large (%lld bytes) to be a certificate",
                          path, (long long) st.st_size);
        close (fd);
        return NULL;
    }
    size_t capacity = (size_t) st.st_size + 1;
    char *text = (char *) malloc (capacity);
    if (!text) {
        kim_client_i_why (why, why_size, "out of memory reading %s", path);
        close (fd);
        return NULL;
    }
    size_t size = 0;
    while (size < capacity - 1) {
        ssize_t got = read (fd, text + size, capacity - 1 - size);
        if (got == -1 && errno == EINTR)
            continue;
        if (got == -1) {
            kim_client_i_why (why, why_size, "cannot read %s: %s", path, strerror (errno));
            sodium_memzero (text, capacity);
            free (text);
            close (fd);
            return NULL;
        }
        if (got == 0)
            break;
        size += (size_t) got;
    }
    close (fd);
    text [size] = 0;
    zconfig_t *root = size > 0? zconfig_str_load (text): NULL;
    sodium_memzero (text, capacity);
    free (text);
    if (!root)
        kim_client_i_why (why, why_size, "%s is not a certificate (empty or not ZPL)", path);
    return root;
}

static bool
s_ends_with (const char *text, const char *suffix)
{
    size_t text_len = strlen (text);
    size_t suffix_len = strlen (suffix);
    return text_len >= suffix_len && streq (text + text_len - suffix_len, suffix);
}

int
kim_client_load_cert_explain (const char *path, char public_key [41], char secret_key [41],
                              char *why, size_t why_size)
{
    kim_client_i_why (why, why_size, "%s", "");
    if (!path || !public_key || !secret_key) {
        kim_client_i_why (why, why_size, "no certificate file given");
        return -KIM_E_KEY;
    }
    //  Like zcert_load: given the public file NAME.cert, use NAME.cert_secret
    //  beside it, which holds both keys.
    if (!s_ends_with (path, "_secret")) {
        char secret_path [PATH_MAX];
        int len = snprintf (secret_path, sizeof secret_path, "%s_secret", path);
        if (len > 0 && (size_t) len < sizeof secret_path && access (secret_path, F_OK) == 0)
            return kim_client_load_cert_explain (secret_path, public_key, secret_key,
                                                 why, why_size);
    }
    if (sodium_init () < 0) {
        kim_client_i_why (why, why_size, "libsodium failed to initialise");
        return -KIM_E_KEY;
    }
    zconfig_t *root = s_load_zpl (path, true, why, why_size);
    if (!root)
        return -KIM_E_KEY;

    int rc = -KIM_E_KEY;
    const char *public_text = zconfig_get (root, "/curve/public-key", NULL);
    const char *secret_text = zconfig_get (root, "/curve/secret-key", NULL);
    uint8_t public_bin [32], secret_bin [32], derived [32];
    if (!secret_text || !*secret_text)
        kim_client_i_why (why, why_size, "%s has no curve/secret-key: pass the .cert_secret file "
                          "written by `kim keygen`", path);
    else
    if (!kim_client_i_z85_key_valid (public_text))
        kim_client_i_why (why, why_size,
                          "%s: curve/public-key is missing or not a 40-character Z85 key", path);
    else
    if (!kim_client_i_z85_key_valid (secret_text))
        kim_client_i_why (why, why_size, "%s: curve/secret-key is not a 40-character Z85 key",
                          path);
    else {
        zmq_z85_decode (public_bin, public_text);
        zmq_z85_decode (secret_bin, secret_text);
        crypto_scalarmult_base (derived, secret_bin);
        if (sodium_memcmp (derived, public_bin, sizeof derived) != 0)
            kim_client_i_why (why, why_size,
                              "%s: curve/public-key does not belong to its secret-key", path);
        else {
            memcpy (public_key, public_text, 41);
            memcpy (secret_key, secret_text, 41);
            rc = 0;
        }
    }
    sodium_memzero (secret_bin, sizeof secret_bin);
    sodium_memzero (derived, sizeof derived);
    //  zconfig keeps the secret text in its tree; wipe it before freeing
    if (secret_text)
        sodium_memzero ((char *) secret_text, strlen (secret_text));
    zconfig_destroy (&root);
    return rc;
}

int
kim_client_load_cert (const char *path, char public_key [41], char secret_key [41])
{
    char why [PATH_MAX + 200];
    int rc = kim_client_load_cert_explain (path, public_key, secret_key, why, sizeof why);
    if (rc)
        zsys_error ("kim_client: %s", why);
    return rc;
}

int
kim_client_load_public_key_explain (const char *path, char public_key [41],
                                    char *why, size_t why_size)
{
    kim_client_i_why (why, why_size, "%s", "");
    if (!path || !public_key) {
        kim_client_i_why (why, why_size, "no certificate file given");
        return -KIM_E_KEY;
    }
    zconfig_t *root = s_load_zpl (path, false, why, why_size);
    if (!root)
        return -KIM_E_KEY;
    int rc = -KIM_E_KEY;
    const char *public_text = zconfig_get (root, "/curve/public-key", NULL);
    if (!kim_client_i_z85_key_valid (public_text))
        kim_client_i_why (why, why_size,
                          "%s: curve/public-key is missing or not a 40-character Z85 key", path);
    else {
        memcpy (public_key, public_text, 41);
        rc = 0;
    }
    //  A secret file works too; do not leave its secret in freed memory
    char *secret_text = zconfig_get (root, "/curve/secret-key", NULL);
    if (secret_text)
        sodium_memzero (secret_text, strlen (secret_text));
    zconfig_destroy (&root);
    return rc;
}

int
kim_client_load_public_key (const char *path, char public_key [41])
{
    char why [PATH_MAX + 200];
    int rc = kim_client_load_public_key_explain (path, public_key, why, sizeof why);
    if (rc)
        zsys_error ("kim_client: %s", why);
    return rc;
}

int
kim_client_load_sign_key (const char *path, char public_key [41], char secret_key [41])
{
    char why [PATH_MAX + 200];
    int rc = -KIM_E_KEY;
    zconfig_t *root = public_key && secret_key? s_load_zpl (path, true, why, sizeof why): NULL;
    if (!root && public_key && secret_key)
        zsys_error ("kim_client: %s", why);
    if (!root)
        return rc;
    char *secret_text = zconfig_get (root, "/sign/secret-key", NULL);
    const char *public_text = zconfig_get (root, "/sign/public-key", NULL);
    uint8_t seed [crypto_sign_SEEDBYTES], pk [crypto_sign_PUBLICKEYBYTES],
            sk [crypto_sign_SECRETKEYBYTES], stated [crypto_sign_PUBLICKEYBYTES];
    if (!kim_client_i_z85_key_valid (secret_text) || !kim_client_i_z85_key_valid (public_text))
        zsys_error ("kim_client: %s: sign/secret-key and sign/public-key must be 40-character "
                    "Z85 keys (see `kim keygen --sign`)", path);
    else {
        zmq_z85_decode (seed, secret_text);
        zmq_z85_decode (stated, public_text);
        crypto_sign_seed_keypair (pk, sk, seed);
        if (sodium_memcmp (pk, stated, sizeof pk) != 0)
            zsys_error ("kim_client: %s: sign/public-key does not belong to sign/secret-key", path);
        else {
            memcpy (public_key, public_text, 41);
            memcpy (secret_key, secret_text, 41);
            rc = 0;
        }
    }
    sodium_memzero (seed, sizeof seed);
    sodium_memzero (sk, sizeof sk);
    if (secret_text)
        sodium_memzero (secret_text, strlen (secret_text));
    zconfig_destroy (&root);
    return rc;
}
