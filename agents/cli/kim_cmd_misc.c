/*  kim_cmd_misc.c — `kim status` (the broker's figures for us) and
    `kim keygen` (an organisation's key pair as czmq certificate files).

    keygen writes both files under temporary names and renames them into
    place, so an interrupted run or a --force replacement never leaves a
    half-written or mismatched pair; the secret file is private from the
    moment it exists (umask), not only after a chmod.
*/
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>
#include <jansson.h>
#include <sodium.h>

#include "kim_cli.h"

const char kim_cmd_status_usage [] =
    "Usage: kim status [connection options]\n"
    "\n"
    "Prints the broker's figures for our organisation as one JSON object:\n"
    "  {\"org\":\"jc.rheine\",\"log_head\":812,\"mailbox\":3,\"in_flight\":0,\"sessions\":4,\n"
    "   \"uptime_ms\":86400000,\"store_bytes\":1048576}\n"
    "org is the organisation the broker authenticated us as; mailbox counts messages\n"
    "waiting for us (delivered or not, until acked). With an operator's key, \"links\"\n"
    "lists the links to the brokers of other districts (PROTOCOL.md 16):\n"
    "  \"links\":[{\"peer\":\"broker.coesfeld\",\"up\":true,\"since_ms\":1796539540000,\n"
    "            \"queued\":0,\"in_flight\":0,\"remote_orgs\":2}]\n"
    "queued counts messages waiting in the link mailbox for that broker; since_ms is when\n"
    "the link last came up or went down.\n"
    "\n"
    "Example:\n"
    "  kim status --cert ./kim-data/keys/jc.rheine.cert_secret\n";

const char kim_cmd_keygen_usage [] =
    "Usage: kim keygen NAME [--dir DIR] [--force] [--sign]\n"
    "\n"
    "Makes a CURVE key pair for an organisation (or the broker) and writes it in\n"
    "czmq's certificate format:\n"
    "  DIR/NAME.cert         the public key: give it to the broker operator, who\n"
    "                        registers it as orgs/<id>/public_key in the broker config\n"
    "  DIR/NAME.cert_secret  both keys, mode 0600: pass it to kim with --cert\n"
    "Prints {\"name\":...,\"public_key\":...,\"cert\":...,\"secret\":...}.\n"
    "\n"
    "Options:\n"
    "  --dir DIR       where to write (default " KIM_DEFAULT_KEY_DIR ", made if missing)\n"
    "  --force         replace existing files (the old key stops working once the\n"
    "                  broker's registry has the new one)\n"
    "  --sign          make an Ed25519 signing key pair instead (sender signatures):\n"
    "                  DIR/NAME.sign         public key (sign/public-key): registered as\n"
    "                                        orgs/<id>/sign_key\n"
    "                  DIR/NAME.sign_secret  both, mode 0600; kim finds it beside\n"
    "                                        NAME.cert_secret and signs every SEND\n"
    "\n"
    "Example:\n"
    "  kim keygen jc.rheine --dir ./kim-data/keys\n";


//  --------------------------------------------------------------------------
//  kim status

int
kim_cmd_status (int argc, char *argv [])
{
    const char *cmd = "status";
    kim_cli_conn_t conn;
    kim_cli_conn_init (&conn);
    int parsed = kim_cli_conn_only (cmd, &conn, argc, argv, NULL);
    if (parsed >= 0)
        return parsed;

    kim_client_t *client = kim_cli_connect (cmd, &conn, 0);
    if (!client)
        return KIM_EXIT_USAGE;
    kim_cmd_t *request = (kim_cmd_t *) calloc (2, sizeof (kim_cmd_t));
    if (!request) {
        kim_client_destroy (&client);
        kim_cli_error (cmd, "out of memory");
        return KIM_EXIT_USAGE;
    }
    kim_cmd_init (&request [0], KIM_CMD_STATUS);
    int rc = kim_client_request (client, &request [0], &request [1], conn.timeout_ms);
    if (rc == 0 && request [1].id != KIM_CMD_STATUS_REPLY)
        rc = -KIM_E_INTERNAL;
    kim_status_t status = request [1].status;
    int exit_code = KIM_EXIT_OK;
    if (rc) {
        kim_cli_error (cmd, "%s", rc == -KIM_E_INTERNAL? "the broker did not answer STATUS "
                       "with STATUS_REPLY": kim_client_error (client));
        exit_code = KIM_EXIT_USAGE;
    }
    else {
        json_t *out = json_pack ("{s:s, s:I, s:I, s:I, s:I, s:I, s:I}",
                                 "org", kim_client_org (client),
                                 "log_head", (json_int_t) status.log_head,
                                 "mailbox", (json_int_t) status.mailbox,
                                 "in_flight", (json_int_t) status.in_flight,
                                 "sessions", (json_int_t) status.sessions,
                                 "uptime_ms", (json_int_t) status.uptime_ms,
                                 "store_bytes", (json_int_t) status.store_bytes);
        //  An operator's reply lists the links, one JSON line each
        json_t *links = request [1].body_size? json_array (): NULL;
        const char *at = (const char *) request [1].body;
        const char *end = at? at + request [1].body_size: NULL;
        while (links && at && at < end) {
            const char *eol = memchr (at, '\n', (size_t) (end - at));
            size_t size = eol? (size_t) (eol - at): (size_t) (end - at);
            json_t *line = json_loadb (at, size, 0, NULL);
            if (line)
                json_array_append_new (links, line);
            at += size + 1;
        }
        if (out && links)
            json_object_set_new (out, "links", links);
        else
            json_decref (links);
        if (!out || json_dumpf (out, stdout, JSON_COMPACT) || fputc ('\n', stdout) == EOF
        ||  fflush (stdout)) {
            kim_cli_error (cmd, "cannot write to stdout");
            exit_code = KIM_EXIT_USAGE;
        }
        json_decref (out);
    }
    free (request);
    kim_client_destroy (&client);
    return exit_code;
}


//  --------------------------------------------------------------------------
//  kim keygen

//  A name becomes a file name: keep it to an id's characters, no leading dot.
static bool
s_name_valid (const char *name)
{
    size_t length = strlen (name);
    if (length == 0 || length > KIM_ID_MAX || name [0] == '.')
        return false;
    return strspn (name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         "0123456789._-") == length;
}

static int
s_fsync_path (const char *path, int flags)
{
    int fd = open (path, flags | O_CLOEXEC);
    if (fd == -1)
        return -1;
    int rc = fsync (fd);
    close (fd);
    return rc;
}

//  mkdir -p with mode 0700 for what it makes.
static int
s_make_dir (const char *dir)
{
    char path [PATH_MAX];
    if (snprintf (path, sizeof path, "%s", dir) >= (int) sizeof path)
        return -1;
    for (char *slash = path + 1; *slash; slash++)
        if (*slash == '/') {
            *slash = 0;
            if (mkdir (path, 0700) == -1 && errno != EEXIST)
                return -1;
            *slash = '/';
        }
    if (mkdir (path, 0700) == -1 && errno != EEXIST)
        return -1;
    struct stat st;
    if (stat (path, &st) == -1)
        return -1;
    if (!S_ISDIR (st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

//  Writes `text` to `path` through a temp file in the same folder: mode
//  `mode` from the first byte, fsynced, renamed into place.
static int
s_write_file (const char *path, const char *text, mode_t mode, bool force)
{
    char temp [PATH_MAX + 32];
    snprintf (temp, sizeof temp, "%s.%d.tmp", path, (int) getpid ());
    int fd = open (temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd == -1)
        return -1;
    size_t size = strlen (text), done = 0;
    while (done < size) {
        ssize_t wrote = write (fd, text + done, size - done);
        if (wrote == -1 && errno == EINTR)
            continue;
        if (wrote <= 0)
            break;
        done += (size_t) wrote;
    }
    int saved = errno;
    if (done < size || fchmod (fd, mode) || fsync (fd)) {
        saved = errno;
        close (fd);
        unlink (temp);
        errno = saved;
        return -1;
    }
    close (fd);
    if (!force && access (path, F_OK) == 0) {
        unlink (temp);
        errno = EEXIST;
        return -1;
    }
    if (rename (temp, path)) {
        saved = errno;
        unlink (temp);
        errno = saved;
        return -1;
    }
    return 0;
}

//  kim keygen NAME --sign: an Ed25519 pair for sender signatures.
static int
s_keygen_sign (const char *cmd, const char *name, const char *dir, bool force)
{
    char public_path [PATH_MAX], secret_path [PATH_MAX + 8];
    if (snprintf (public_path, sizeof public_path, "%s/%s.sign", dir, name)
            >= (int) sizeof public_path - 32)
        return kim_cli_usage_error (cmd, "--dir path is too long");
    snprintf (secret_path, sizeof secret_path, "%s_secret", public_path);
    if (!force) {
        const char *existing = access (public_path, F_OK) == 0? public_path
                             : access (secret_path, F_OK) == 0? secret_path: NULL;
        if (existing)
            return kim_cli_error (cmd, "%s exists already: keep it, or pass --force to replace "
                                  "the signing key pair", existing);
    }
    if (s_make_dir (dir))
        return kim_cli_error (cmd, "cannot create %s: %s", dir, strerror (errno));
    if (sodium_init () < 0)
        return kim_cli_error (cmd, "libsodium failed to initialise");
    uint8_t seed [crypto_sign_SEEDBYTES], pk [crypto_sign_PUBLICKEYBYTES],
            sk [crypto_sign_SECRETKEYBYTES];
    char seed_txt [41], pk_txt [41], text [512];
    randombytes_buf (seed, sizeof seed);
    crypto_sign_seed_keypair (pk, sk, seed);
    zmq_z85_encode (seed_txt, seed, sizeof seed);
    zmq_z85_encode (pk_txt, pk, sizeof pk);
    sodium_memzero (seed, sizeof seed);
    sodium_memzero (sk, sizeof sk);

    snprintf (text, sizeof text,
              "#   kim signing key (Ed25519) of %s: register sign/public-key as\n"
              "#   orgs/%s/sign_key in the broker config.\nsign\n    public-key = \"%s\"\n",
              name, name, pk_txt);
    int rc = s_write_file (public_path, text, 0644, force);
    int saved = errno;
    if (rc == 0) {
        snprintf (text, sizeof text,
                  "#   kim SECRET signing key (Ed25519) of %s: never share this file.\n"
                  "sign\n    public-key = \"%s\"\n    secret-key = \"%s\"\n",
                  name, pk_txt, seed_txt);
        rc = s_write_file (secret_path, text, 0600, force);
        saved = errno;
        if (rc)
            unlink (public_path);
    }
    sodium_memzero (text, sizeof text);
    sodium_memzero (seed_txt, sizeof seed_txt);
    if (rc)
        return kim_cli_error (cmd, "cannot write the signing key pair to %s: %s", dir,
                              strerror (saved));
    s_fsync_path (dir, O_RDONLY | O_DIRECTORY);
    json_t *out = json_pack ("{s:s, s:s, s:s, s:s}", "name", name, "sign_key", pk_txt,
                             "sign", public_path, "secret", secret_path);
    if (!out || json_dumpf (out, stdout, JSON_COMPACT) || fputc ('\n', stdout) == EOF
    ||  fflush (stdout)) {
        json_decref (out);
        return kim_cli_error (cmd, "cannot write to stdout");
    }
    json_decref (out);
    return KIM_EXIT_OK;
}

int
kim_cmd_keygen (int argc, char *argv [])
{
    const char *cmd = "keygen";
    const char *name = NULL, *dir = KIM_DEFAULT_KEY_DIR;
    bool force = false, sign = false;
    kim_cli_args_t args;
    kim_cli_args_init (&args, argc, argv);
    while (kim_cli_args_next (&args)) {
        if (kim_cli_args_help (&args)) {
            kim_cli_help (stdout, cmd);
            return KIM_EXIT_OK;
        }
        if (kim_cli_args_is (&args, "--dir")) {
            if (!(dir = kim_cli_args_value (&args)))
                return KIM_EXIT_USAGE;
            if (!*dir)
                return kim_cli_usage_error (cmd, "--dir must not be empty");
        }
        else
        if (kim_cli_args_is (&args, "--force"))
            force = true;
        else
        if (kim_cli_args_is (&args, "--sign"))
            sign = true;
        else
        if (args.positional && !name)
            name = args.arg;
        else
            return kim_cli_args_unknown (&args);
    }
    if (args.failed)
        return KIM_EXIT_USAGE;
    if (!name)
        return kim_cli_usage_error (cmd, "which NAME? e.g. kim keygen jc.rheine");
    if (!s_name_valid (name))
        return kim_cli_usage_error (cmd, "NAME '%s' must be 1..%d of A-Z a-z 0-9 . _ - "
                                    "and not start with a dot", name, KIM_ID_MAX);

    if (sign)
        return s_keygen_sign (cmd, name, dir, force);

    char public_path [PATH_MAX], secret_path [PATH_MAX + 8];
    char temp_public [PATH_MAX + 32], temp_secret [PATH_MAX + 40];
    if (snprintf (public_path, sizeof public_path, "%s/%s.cert", dir, name)
            >= (int) sizeof public_path - 32)
        return kim_cli_usage_error (cmd, "--dir path is too long");
    snprintf (secret_path, sizeof secret_path, "%s_secret", public_path);
    snprintf (temp_public, sizeof temp_public, "%s/.%s.cert.%d.tmp", dir, name, (int) getpid ());
    snprintf (temp_secret, sizeof temp_secret, "%s_secret", temp_public);

    if (!force) {
        const char *existing = access (public_path, F_OK) == 0? public_path
                             : access (secret_path, F_OK) == 0? secret_path: NULL;
        if (existing)
            return kim_cli_error (cmd, "%s exists already: keep it, or pass --force to replace "
                                  "the key pair", existing);
    }
    if (s_make_dir (dir))
        return kim_cli_error (cmd, "cannot create %s: %s", dir, strerror (errno));

    zcert_t *cert = zcert_new ();
    if (!cert)
        return kim_cli_error (cmd, "cannot generate a key pair (is libzmq built with CURVE?)");
    zcert_set_meta (cert, "name", "%s", name);
    zcert_set_meta (cert, "created-by", "kim keygen %s", KIM_VERSION);

    //  The umask makes both files 0600 from their first byte; the public one
    //  is opened up after it is complete.
    mode_t old_mask = umask (077);
    int rc = zcert_save_public (cert, temp_public);
    if (rc == 0)
        rc = zcert_save_secret (cert, temp_secret);
    umask (old_mask);
    int saved_errno = errno;
    if (rc == 0 && (chmod (temp_public, 0644) || chmod (temp_secret, 0600)
                ||  s_fsync_path (temp_public, O_RDONLY) || s_fsync_path (temp_secret, O_RDONLY)))
        rc = -1, saved_errno = errno;
    if (rc == 0 && (rename (temp_secret, secret_path) || rename (temp_public, public_path)))
        rc = -1, saved_errno = errno;
    if (rc == 0)
        s_fsync_path (dir, O_RDONLY | O_DIRECTORY);
    else {
        unlink (temp_public);
        unlink (temp_secret);
        zcert_destroy (&cert);
        return kim_cli_error (cmd, "cannot write the key pair to %s: %s", dir,
                              strerror (saved_errno));
    }
    json_t *out = json_pack ("{s:s, s:s, s:s, s:s}", "name", name,
                             "public_key", zcert_public_txt (cert),
                             "cert", public_path, "secret", secret_path);
    zcert_destroy (&cert);
    if (!out || json_dumpf (out, stdout, JSON_COMPACT) || fputc ('\n', stdout) == EOF
    ||  fflush (stdout)) {
        json_decref (out);
        return kim_cli_error (cmd, "cannot write to stdout");
    }
    json_decref (out);
    return KIM_EXIT_OK;
}
