/*  kim_keys.c — loads or makes the broker's CURVE certificate. */
#include <sys/stat.h>

#include "kim_keys.h"

bool
kim_keys_private (const char *path)
{
    struct stat st;
    return stat (path, &st) == 0 && (st.st_mode & 077) == 0;
}

zcert_t *
kim_keys_broker_cert (const char *dir, const char *name, char *error, size_t error_size)
{
    if (zsys_dir_create ("%s", dir) != 0 || chmod (dir, 0700) != 0) {
        snprintf (error, error_size, "%s: cannot create the key folder: %s", dir, strerror (errno));
        return NULL;
    }
    char public_path [PATH_MAX], secret_path [PATH_MAX];
    snprintf (public_path, sizeof public_path, "%s/broker.cert", dir);
    snprintf (secret_path, sizeof secret_path, "%s/broker.cert_secret", dir);

    if (zsys_file_exists (secret_path)) {
        if (!kim_keys_private (secret_path)) {
            snprintf (error, error_size, "%s: the broker's secret key is readable by others; "
                      "run: chmod 600 %s", secret_path, secret_path);
            return NULL;
        }
        zcert_t *cert = zcert_load (public_path);
        if (!cert || strlen (zcert_secret_txt (cert)) != 40
        ||  streq (zcert_secret_txt (cert), "0000000000000000000000000000000000000000")) {
            zcert_destroy (&cert);
            snprintf (error, error_size, "%s: not a valid czmq certificate", secret_path);
            return NULL;
        }
        return cert;
    }
    //  First start: make a key pair. The umask keeps the secret file private
    //  from the moment it exists, not only after a chmod.
    zcert_t *cert = zcert_new ();
    if (!cert) {
        snprintf (error, error_size, "cannot generate a key pair");
        return NULL;
    }
    zcert_set_meta (cert, "name", "%s", name);
    zcert_set_meta (cert, "role", "kim broker");
    mode_t old_mask = umask (077);
    int rc = zcert_save (cert, public_path);
    umask (old_mask);
    if (rc != 0 || chmod (public_path, 0644) != 0 || chmod (secret_path, 0600) != 0) {
        snprintf (error, error_size, "%s: cannot write the broker's key pair", dir);
        zcert_destroy (&cert);
        return NULL;
    }
    zsys_notice ("made a new broker key pair in %s (public key %s)", dir, zcert_public_txt (cert));
    return cert;
}
