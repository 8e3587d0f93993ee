/*
 * cs_kafka_broker.c — the embedded Kafka broker of citizen_sync's tests and
 * demo.
 *
 * It runs librdkafka's mock cluster (rdkafka_mock.h) in this process: N
 * brokers that speak the real Kafka protocol on 127.0.0.1, with ephemeral
 * ports, and keep every message in memory.  Any Kafka client (librdkafka,
 * kcat, the citizen_sync consumer worker) can produce to it, fetch from it and
 * join consumer groups on it.
 *
 * Protocol with the process that started it:
 *   - on start it prints one line "BOOTSTRAP host:port[,host:port...]", then
 *     one line "READY", both flushed;
 *   - then it reads commands, one per line, from stdin and from the optional
 *     control FIFO, and answers each on stdout with one line "OK ..." or
 *     "ERR reason" (see usage() for the commands);
 *   - it stops on EOF on stdin (unless --no-stdin), "quit", SIGTERM or
 *     SIGINT, destroys the cluster and exits 0.
 * Diagnostics go to stderr only, so stdout stays machine-readable.
 *
 * Limits of the mock cluster (librdkafka 2.0.x): each partition keeps at most
 * 5 MiB of record batches (as sent, so compressed batches count compressed)
 * and 100000 batches; older batches are dropped silently, which moves the
 * partition's low watermark.  The "offsets" command shows when that happened.
 * Leaders do not move when a broker is taken down; use "leader" for that.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "nodelay.h"

#define DEFAULT_TOPIC      "gov.auth.citizen"
#define DEFAULT_PARTITIONS 4
#define MAX_PARTITIONS     100000
#define MAX_BROKERS        64
#define LINE_MAX_LEN       1024
#define MAX_ARGS           8
#define QUERY_TIMEOUT_MS   5000
#define MAX_API_KEY        127 /* clear without argument clears 0..this */

/* One --topic option: NAME with its partition count. */
struct topic_spec {
    const char *name;
    int         partitions;
};

/* Command-line settings. */
struct options {
    int                brokers;
    struct topic_spec *topics;
    int                topic_cnt;
    const char        *control_path;
    const char        *debug;
    int                use_stdin;
};

/* The running cluster and the handles around it. */
struct broker {
    rd_kafka_t              *owner;    /* handle the mock cluster lives on */
    rd_kafka_mock_cluster_t *mcluster;
    rd_kafka_t              *query;    /* client of the cluster, made lazily */
    const char              *bootstraps;
    int                      broker_cnt;
    int                      quit;
};

/* Buffered line splitting for one input file descriptor. */
struct line_reader {
    int    fd;
    size_t len;
    int    overlong; /* discarding the rest of a line that did not fit */
    char   buf[LINE_MAX_LEN];
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* Prints one answer line to stdout and flushes it. */
static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* Prints a diagnostic to stderr, prefixed with the program name. */
static void warnmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warnmsg(const char *fmt, ...)
{
    va_list ap;

    fputs("cs_kafka_broker: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/*
 * Parses the whole of s as a decimal integer in [min, max] into *out.
 * Returns 0 on success, -1 (leaving *out alone) otherwise.
 */
static int parse_int(const char *s, long min, long max, long *out)
{
    char *end;
    long  v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Returns 1 if name is a legal Kafka topic name, 0 otherwise. */
static int valid_topic_name(const char *name)
{
    size_t n = strlen(name);

    if (n == 0 || n > 249 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return 0;
    return strspn(name, "abcdefghijklmnopqrstuvwxyz"
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* ------------------------------------------------------------------ */
/* Command-line                                                        */
/* ------------------------------------------------------------------ */

static void usage(FILE *out)
{
    fputs(
        "usage: cs_kafka_broker [--brokers N] [--topic NAME[:PARTITIONS]]...\n"
        "                       [--control FIFO] [--no-stdin] [--debug CTX]\n"
        "\n"
        "  --brokers N         brokers in the cluster, ids 1..N (default 1)\n"
        "  --topic NAME[:P]    create topic NAME with P partitions (default 4);\n"
        "                      repeatable; default " DEFAULT_TOPIC ":4\n"
        "  --control FIFO      also read commands from FIFO (created if absent)\n"
        "  --no-stdin          ignore stdin (stop on quit or a signal only)\n"
        "  --debug CTX         librdkafka debug contexts, e.g. mock,protocol\n"
        "\n"
        "Prints 'BOOTSTRAP host:port,...' then 'READY'; then one answer line,\n"
        "'OK ...' or 'ERR reason', per command:\n"
        "  ping                          OK pong\n"
        "  down ID | up ID               broker ID (1..N, -1 = all) down/up\n"
        "  rtt ID MS                     delay broker ID's responses by MS\n"
        "  error APIKEY ERRCODE COUNT    fail the next COUNT requests of APIKEY\n"
        "  clear [APIKEY]                drop pushed errors (all api keys)\n"
        "  topic NAME PARTITIONS         create a topic\n"
        "  leader TOPIC PARTITION ID     move a partition's leader (-1: none)\n"
        "  coordinator group|transaction KEY ID   set a coordinator\n"
        "  offsets TOPIC                 OK offsets TOPIC retained=R end=E\n"
        "                                p0=LOW-HIGH ...\n"
        "  quit                          OK bye, then exit\n",
        out);
}

/*
 * Parses "NAME[:PARTITIONS]" into *spec (spec->name points into arg, which
 * is modified).  Returns 0 on success, -1 after a diagnostic otherwise.
 */
static int parse_topic_spec(char *arg, struct topic_spec *spec)
{
    char *colon = strrchr(arg, ':');
    long  parts = DEFAULT_PARTITIONS;

    if (colon) {
        *colon = '\0';
        if (parse_int(colon + 1, 1, MAX_PARTITIONS, &parts) != 0) {
            warnmsg("bad partition count in --topic %s:%s", arg, colon + 1);
            return -1;
        }
    }
    if (!valid_topic_name(arg)) {
        warnmsg("bad topic name '%s'", arg);
        return -1;
    }
    spec->name = arg;
    spec->partitions = (int)parts;
    return 0;
}

/*
 * Fills *opts from argv.  Returns 0 to go on, 1 after --help, -1 after a
 * diagnostic on bad usage.  opts->topics is malloc'ed (argc entries).
 */
static int parse_options(int argc, char **argv, struct options *opts)
{
    static const struct option longopts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"control", required_argument, NULL, 'c'},
        {"no-stdin", no_argument, NULL, 'n'},
        {"debug", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    static struct topic_spec default_topic = {DEFAULT_TOPIC,
                                              DEFAULT_PARTITIONS};
    long v;
    int  c;

    memset(opts, 0, sizeof(*opts));
    opts->brokers = 1;
    opts->use_stdin = 1;
    opts->topics = calloc((size_t)argc, sizeof(*opts->topics));
    if (!opts->topics)
        return -1;

    while ((c = getopt_long(argc, argv, "b:t:c:nd:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            if (parse_int(optarg, 1, MAX_BROKERS, &v) != 0) {
                warnmsg("--brokers wants 1..%d", MAX_BROKERS);
                return -1;
            }
            opts->brokers = (int)v;
            break;
        case 't':
            if (parse_topic_spec(optarg, &opts->topics[opts->topic_cnt]) != 0)
                return -1;
            opts->topic_cnt++;
            break;
        case 'c': opts->control_path = optarg; break;
        case 'n': opts->use_stdin = 0; break;
        case 'd': opts->debug = optarg; break;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc) {
        warnmsg("unexpected argument '%s'", argv[optind]);
        return -1;
    }
    if (opts->topic_cnt == 0) {
        opts->topics[0] = default_topic;
        opts->topic_cnt = 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Cluster life cycle                                                  */
/* ------------------------------------------------------------------ */

/*
 * Sets name=value on conf.  Returns 0 on success, -1 after a diagnostic.
 */
static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char errstr[256];

    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) !=
        RD_KAFKA_CONF_OK) {
        warnmsg("%s=%s: %s", name, value, errstr);
        return -1;
    }
    return 0;
}

/*
 * Creates the owner handle and the mock cluster of opts->brokers brokers with
 * opts' topics.  Returns 0 with b filled in, -1 after a diagnostic (b is then
 * safe to pass to broker_stop()).
 */
static int broker_start(struct broker *b, const struct options *opts)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char             errstr[256];
    int              i;

    memset(b, 0, sizeof(*b));
    b->broker_cnt = opts->brokers;
    /* Level 4 hides the notice that this handle has no bootstrap servers. */
    if (conf_set(conf, "log_level", opts->debug ? "7" : "4") != 0 ||
        (opts->debug && conf_set(conf, "debug", opts->debug) != 0)) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    /* A producer with no bootstrap servers: it never connects anywhere. */
    b->owner = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!b->owner) {
        warnmsg("rd_kafka_new: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    b->mcluster = rd_kafka_mock_cluster_new(b->owner, opts->brokers);
    if (!b->mcluster) {
        warnmsg("rd_kafka_mock_cluster_new failed");
        return -1;
    }
    for (i = 0; i < opts->topic_cnt; i++) {
        const struct topic_spec *t = &opts->topics[i];
        int rf = opts->brokers < 3 ? opts->brokers : 3;
        rd_kafka_resp_err_t err =
            rd_kafka_mock_topic_create(b->mcluster, t->name, t->partitions, rf);

        if (err) {
            warnmsg("topic %s: %s", t->name, rd_kafka_err2str(err));
            return -1;
        }
    }
    b->bootstraps = rd_kafka_mock_cluster_bootstraps(b->mcluster);
    return 0;
}

/* Destroys whatever broker_start() and the commands created. */
static void broker_stop(struct broker *b)
{
    if (b->query)
        rd_kafka_destroy(b->query);
    if (b->mcluster)
        rd_kafka_mock_cluster_destroy(b->mcluster);
    if (b->owner)
        rd_kafka_destroy(b->owner);
    memset(b, 0, sizeof(*b));
}

/*
 * Returns a client handle bootstrapped on the cluster, creating it on first
 * use, or NULL after an ERR answer.
 */
static rd_kafka_t *query_handle(struct broker *b)
{
    rd_kafka_conf_t *conf;
    char             errstr[256];

    if (b->query)
        return b->query;
    conf = rd_kafka_conf_new();
    if (conf_set(conf, "bootstrap.servers", b->bootstraps) != 0 ||
        conf_set(conf, "log_level", "1") != 0) {
        rd_kafka_conf_destroy(conf);
        reply("ERR cannot configure query client");
        return NULL;
    }
    b->query = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (!b->query) {
        rd_kafka_conf_destroy(conf);
        reply("ERR query client: %s", errstr);
    }
    return b->query;
}

/* ------------------------------------------------------------------ */
/* Commands: each answers exactly one line                             */
/* ------------------------------------------------------------------ */

/*
 * Parses a broker id argument: 1..broker_cnt, or -1 for all brokers.
 * Returns 0 with *id set, or -1 after an ERR answer.
 */
static int arg_broker_id(const struct broker *b, const char *s, int32_t *id)
{
    long v;

    if (parse_int(s, -1, b->broker_cnt, &v) != 0 || v == 0) {
        reply("ERR broker id must be 1..%d or -1, got '%s'", b->broker_cnt, s);
        return -1;
    }
    *id = (int32_t)v;
    return 0;
}

/* Answers for an rd_kafka_resp_err_t result of a mock call. */
static void reply_result(rd_kafka_resp_err_t err, const char *what)
{
    if (err)
        reply("ERR %s: %s", what, rd_kafka_err2str(err));
    else
        reply("OK %s", what);
}

static void cmd_ping(struct broker *b, int argc, char **argv)
{
    (void)b, (void)argc, (void)argv;
    reply("OK pong");
}

static void cmd_quit(struct broker *b, int argc, char **argv)
{
    (void)argc, (void)argv;
    b->quit = 1;
    reply("OK bye");
}

/* down ID | up ID */
static void cmd_updown(struct broker *b, int argc, char **argv)
{
    int32_t id;
    char    what[32];
    int     up = strcmp(argv[0], "up") == 0;

    (void)argc;
    if (arg_broker_id(b, argv[1], &id) != 0)
        return;
    snprintf(what, sizeof(what), "%s %d", argv[0], (int)id);
    reply_result(up ? rd_kafka_mock_broker_set_up(b->mcluster, id)
                    : rd_kafka_mock_broker_set_down(b->mcluster, id),
                 what);
}

/* rtt ID MS */
static void cmd_rtt(struct broker *b, int argc, char **argv)
{
    int32_t id;
    long    ms;
    char    what[48];

    (void)argc;
    if (arg_broker_id(b, argv[1], &id) != 0)
        return;
    if (parse_int(argv[2], 0, 3600 * 1000, &ms) != 0) {
        reply("ERR rtt wants 0..3600000 ms, got '%s'", argv[2]);
        return;
    }
    snprintf(what, sizeof(what), "rtt %d %ld", (int)id, ms);
    reply_result(rd_kafka_mock_broker_set_rtt(b->mcluster, id, (int)ms), what);
}

/* error APIKEY ERRCODE COUNT */
static void cmd_error(struct broker *b, int argc, char **argv)
{
    long                 apikey, code, cnt, i;
    rd_kafka_resp_err_t *errs;

    (void)argc;
    if (parse_int(argv[1], 0, MAX_API_KEY, &apikey) != 0 ||
        parse_int(argv[2], -200, 1000, &code) != 0 ||
        parse_int(argv[3], 1, 100000, &cnt) != 0) {
        reply("ERR usage: error APIKEY(0..%d) ERRCODE COUNT(1..100000)",
              MAX_API_KEY);
        return;
    }
    errs = malloc((size_t)cnt * sizeof(*errs));
    if (!errs) {
        reply("ERR out of memory");
        return;
    }
    for (i = 0; i < cnt; i++)
        errs[i] = (rd_kafka_resp_err_t)code;
    rd_kafka_mock_push_request_errors_array(b->mcluster, (int16_t)apikey,
                                            (size_t)cnt, errs);
    free(errs);
    reply("OK error %ld %ld %ld %s", apikey, code, cnt,
          rd_kafka_err2name((rd_kafka_resp_err_t)code));
}

/* clear [APIKEY] */
static void cmd_clear(struct broker *b, int argc, char **argv)
{
    long apikey, k;

    if (argc == 2) {
        if (parse_int(argv[1], 0, MAX_API_KEY, &apikey) != 0) {
            reply("ERR usage: clear [APIKEY(0..%d)]", MAX_API_KEY);
            return;
        }
        rd_kafka_mock_clear_request_errors(b->mcluster, (int16_t)apikey);
        reply("OK clear %ld", apikey);
        return;
    }
    for (k = 0; k <= MAX_API_KEY; k++)
        rd_kafka_mock_clear_request_errors(b->mcluster, (int16_t)k);
    reply("OK clear all");
}

/* topic NAME PARTITIONS */
static void cmd_topic(struct broker *b, int argc, char **argv)
{
    long parts;
    int  rf = b->broker_cnt < 3 ? b->broker_cnt : 3;
    char what[300];

    (void)argc;
    if (!valid_topic_name(argv[1])) {
        reply("ERR bad topic name '%s'", argv[1]);
        return;
    }
    if (parse_int(argv[2], 1, MAX_PARTITIONS, &parts) != 0) {
        reply("ERR partitions must be 1..%d", MAX_PARTITIONS);
        return;
    }
    snprintf(what, sizeof(what), "topic %s %ld", argv[1], parts);
    reply_result(
        rd_kafka_mock_topic_create(b->mcluster, argv[1], (int)parts, rf), what);
}

/* leader TOPIC PARTITION ID */
static void cmd_leader(struct broker *b, int argc, char **argv)
{
    long    part;
    int32_t id;
    char    what[300];

    (void)argc;
    if (!valid_topic_name(argv[1]) ||
        parse_int(argv[2], 0, MAX_PARTITIONS - 1, &part) != 0) {
        reply("ERR usage: leader TOPIC PARTITION BROKER_ID");
        return;
    }
    if (arg_broker_id(b, argv[3], &id) != 0)
        return;
    snprintf(what, sizeof(what), "leader %s %ld %d", argv[1], part, (int)id);
    reply_result(rd_kafka_mock_partition_set_leader(b->mcluster, argv[1],
                                                    (int32_t)part, id),
                 what);
}

/* coordinator group|transaction KEY ID */
static void cmd_coordinator(struct broker *b, int argc, char **argv)
{
    int32_t id;
    char    what[300];

    (void)argc;
    if (strcmp(argv[1], "group") != 0 && strcmp(argv[1], "transaction") != 0) {
        reply("ERR usage: coordinator group|transaction KEY BROKER_ID");
        return;
    }
    if (arg_broker_id(b, argv[3], &id) != 0)
        return;
    snprintf(what, sizeof(what), "coordinator %s %.200s %d", argv[1], argv[2],
             (int)id);
    reply_result(
        rd_kafka_mock_coordinator_set(b->mcluster, argv[1], argv[2], id), what);
}

/*
 * Appends " pN=LOW-HIGH" for each partition of topic to buf and sums the
 * retained (HIGH-LOW) and end (HIGH) offsets.  Returns 0, or -1 after an ERR
 * answer.
 */
static int collect_offsets(rd_kafka_t *rk, const rd_kafka_metadata_topic_t *t,
                           char *buf, size_t bufsize, int64_t *retained,
                           int64_t *end)
{
    size_t used = 0;
    int    i;

    *retained = *end = 0;
    for (i = 0; i < t->partition_cnt; i++) {
        int32_t             p = t->partitions[i].id;
        int64_t             lo, hi;
        rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
            rk, t->topic, p, &lo, &hi, QUERY_TIMEOUT_MS);

        if (err) {
            reply("ERR offsets %s [%d]: %s", t->topic, (int)p,
                  rd_kafka_err2str(err));
            return -1;
        }
        *retained += hi - lo;
        *end += hi;
        if (used < bufsize)
            used += (size_t)snprintf(buf + used, bufsize - used,
                                     " p%d=%lld-%lld", (int)p, (long long)lo,
                                     (long long)hi);
    }
    return 0;
}

/*
 * Returns the metadata entry of topic in md, or NULL after an ERR answer.
 * Listing all topics (rather than asking for one) never auto-creates it.
 */
static const rd_kafka_metadata_topic_t *
find_topic(const rd_kafka_metadata_t *md, const char *topic)
{
    int i;

    for (i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, topic) != 0)
            continue;
        if (md->topics[i].err) {
            reply("ERR offsets %s: %s", topic,
                  rd_kafka_err2str(md->topics[i].err));
            return NULL;
        }
        return &md->topics[i];
    }
    reply("ERR offsets %s: unknown topic", topic);
    return NULL;
}

/* offsets TOPIC */
static void cmd_offsets(struct broker *b, int argc, char **argv)
{
    rd_kafka_t                      *rk = query_handle(b);
    const rd_kafka_metadata_t       *md = NULL;
    const rd_kafka_metadata_topic_t *t;
    rd_kafka_resp_err_t              err;
    int64_t                          retained, end;
    static char                      parts[64 * 1024];

    (void)argc;
    if (!rk)
        return;
    err = rd_kafka_metadata(rk, 1, NULL, &md, QUERY_TIMEOUT_MS);
    if (err) {
        reply("ERR offsets %s: %s", argv[1], rd_kafka_err2str(err));
        return;
    }
    t = find_topic(md, argv[1]);
    if (t && collect_offsets(rk, t, parts, sizeof(parts), &retained, &end) == 0)
        reply("OK offsets %s retained=%lld end=%lld%s", argv[1],
              (long long)retained, (long long)end, parts);
    rd_kafka_metadata_destroy(md);
}

/* A command: name, accepted argument counts (name included), handler. */
struct command {
    const char *name;
    int         min_args, max_args;
    void (*fn)(struct broker *b, int argc, char **argv);
    const char *usage;
};

static const struct command commands[] = {
    {"ping", 1, 1, cmd_ping, "ping"},
    {"quit", 1, 1, cmd_quit, "quit"},
    {"down", 2, 2, cmd_updown, "down BROKER_ID"},
    {"up", 2, 2, cmd_updown, "up BROKER_ID"},
    {"rtt", 3, 3, cmd_rtt, "rtt BROKER_ID MS"},
    {"error", 4, 4, cmd_error, "error APIKEY ERRCODE COUNT"},
    {"clear", 1, 2, cmd_clear, "clear [APIKEY]"},
    {"topic", 3, 3, cmd_topic, "topic NAME PARTITIONS"},
    {"leader", 4, 4, cmd_leader, "leader TOPIC PARTITION BROKER_ID"},
    {"coordinator", 4, 4, cmd_coordinator,
     "coordinator group|transaction KEY BROKER_ID"},
    {"offsets", 2, 2, cmd_offsets, "offsets TOPIC"},
};

/*
 * Runs one command line (modified in place).  Blank lines and lines starting
 * with '#' are ignored and get no answer; everything else gets one line.
 */
static void run_command(struct broker *b, char *line)
{
    char  *argv[MAX_ARGS + 1];
    int    argc = 0;
    char  *save = NULL, *tok;
    size_t i;

    for (tok = strtok_r(line, " \t\r", &save); tok && argc <= MAX_ARGS;
         tok = strtok_r(NULL, " \t\r", &save))
        argv[argc++] = tok;
    if (argc == 0 || argv[0][0] == '#')
        return;
    for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const struct command *c = &commands[i];

        if (strcmp(argv[0], c->name) != 0)
            continue;
        if (argc < c->min_args || argc > c->max_args)
            reply("ERR usage: %s", c->usage);
        else
            c->fn(b, argc, argv);
        return;
    }
    reply("ERR unknown command '%.64s'", argv[0]);
}

/* ------------------------------------------------------------------ */
/* Input                                                               */
/* ------------------------------------------------------------------ */

/*
 * Reads what is available on r->fd and runs each complete line.  Returns
 * 0 to go on, 1 on EOF, -1 on a read error (after a diagnostic).
 */
static int reader_drain(struct line_reader *r, struct broker *b)
{
    ssize_t n = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);
    char   *start, *nl, *end;

    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN)
            return 0;
        warnmsg("read: %s", strerror(errno));
        return -1;
    }
    if (n == 0)
        return 1;
    r->len += (size_t)n;
    start = r->buf;
    end = r->buf + r->len;
    while (!b->quit && (nl = memchr(start, '\n', (size_t)(end - start)))) {
        *nl = '\0';
        if (r->overlong)
            r->overlong = 0; /* tail of a line already answered */
        else
            run_command(b, start);
        start = nl + 1;
    }
    r->len -= (size_t)(start - r->buf);
    memmove(r->buf, start, r->len);
    if (r->len == sizeof(r->buf)) {
        if (!r->overlong)
            reply("ERR line too long");
        r->overlong = 1;
        r->len = 0;
    }
    return 0;
}

/*
 * Opens (creating if needed) the control FIFO at path.  It is opened
 * read-write so that writers coming and going never cause EOF.  Returns the
 * file descriptor, or -1 after a diagnostic.
 */
static int open_control_fifo(const char *path)
{
    struct stat st;
    int         fd;

    if (mkfifo(path, 0600) != 0 && errno != EEXIST) {
        warnmsg("mkfifo %s: %s", path, strerror(errno));
        return -1;
    }
    fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        warnmsg("open %s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) {
        warnmsg("%s is not a FIFO", path);
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * Blocks SIGTERM and SIGINT (in this thread and the librdkafka threads that
 * inherit the mask) and returns a signalfd reporting them, or -1.
 */
static int make_signal_fd(void)
{
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return -1;
    signal(SIGPIPE, SIG_IGN);
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

/*
 * Serves commands from stdin (if use_stdin), the control FIFO (ctl_fd >= 0)
 * and signals until quit, stdin EOF or a signal.  Returns 0, or -1 on an
 * input error.
 */
static int serve(struct broker *b, int use_stdin, int ctl_fd, int sig_fd)
{
    static struct line_reader in, ctl;
    struct pollfd             pfd[3];

    in.fd = use_stdin ? STDIN_FILENO : -1;
    ctl.fd = ctl_fd;
    pfd[0].fd = sig_fd;
    pfd[1].fd = in.fd;
    pfd[2].fd = ctl.fd;
    for (int i = 0; i < 3; i++)
        pfd[i].events = POLLIN;

    while (!b->quit) {
        int rc;

        if (poll(pfd, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            warnmsg("poll: %s", strerror(errno));
            return -1;
        }
        if (pfd[0].revents) {
            warnmsg("signal received, stopping");
            return 0;
        }
        if (pfd[1].revents) {
            rc = reader_drain(&in, b);
            if (rc != 0)
                return rc < 0 ? -1 : 0; /* EOF on stdin: stop */
        }
        if (pfd[2].revents && !b->quit && reader_drain(&ctl, b) < 0)
            return -1;
    }
    return 0;
}

/*
 * Starts the cluster, announces it, serves commands until told to stop.
 * Returns the exit status: 0 on a normal stop, 1 on failure.
 */
static int run(const struct options *opts)
{
    struct broker b;
    int           sig_fd, ctl_fd = -1, rc;

    sig_fd = make_signal_fd();
    if (sig_fd < 0) {
        warnmsg("signalfd: %s", strerror(errno));
        return 1;
    }
    if (opts->control_path) {
        ctl_fd = open_control_fifo(opts->control_path);
        if (ctl_fd < 0) {
            close(sig_fd);
            return 1;
        }
    }
    rc = broker_start(&b, opts);
    if (rc == 0 && nodelay_start() != 0)
        warnmsg("could not start the TCP_NODELAY thread: responses may be delayed");
    if (rc == 0) {
        reply("BOOTSTRAP %s", b.bootstraps);
        reply("READY");
        rc = serve(&b, opts->use_stdin, ctl_fd, sig_fd);
    }
    broker_stop(&b);
    if (ctl_fd >= 0)
        close(ctl_fd);
    close(sig_fd);
    return rc == 0 ? 0 : 1;
}

/* Exit status: 0 normal stop or --help, 1 failure, 2 bad usage. */
int main(int argc, char **argv)
{
    struct options opts;
    int            rc = parse_options(argc, argv, &opts);

    if (rc == 0)
        rc = run(&opts);
    else
        rc = rc > 0 ? 0 : 2;
    free(opts.topics);
    return rc;
}
