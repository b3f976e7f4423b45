/*
 * vmhealth._fastlane: repeats settled network probes off the Python interpreter.
 *
 * Why: at 2,000 probes a second (1,000 domains, an HTTP and a TCP probe each at
 * periodSeconds 1) the Python engine's own bookkeeping (schedule, run objects,
 * results, metrics) costs more than the connections themselves (docs/probes.md).
 * Most of those probes are the same success over and over. The Python prober keeps
 * every decision; once a probe has settled (healthy, its success threshold met) it
 * hands the probe's last successful exchange to this engine as a "lane", which
 * repeats it every period in a thread of its own, without the GIL:
 *
 *   - the same address and port, the same request bytes (none for tcpSocket);
 *   - a repetition that ends the same way (connected; or an HTTP answer with the
 *     same status, read to its end, the end of the stream, or 10 KiB of body, as
 *     the Python handler reads it) is counted here, silently: a count, a duration
 *     histogram with the metrics' buckets, the last start time and duration;
 *   - anything else (refused, reset, another status, an answer llhttp rejects, no
 *     socket, out of time) or the guest's cached addresses going stale ends the
 *     lane: the tick is handed back to Python, which counts a timeout as the failure
 *     it is and otherwise runs that probe again its own way (messages, redirects,
 *     thresholds, suppression, actions), and may hand the probe over again once it
 *     has settled.
 *
 * Python reads the silent counts when it needs them (status, metrics, handback),
 * so a settled host costs the interpreter nothing per probe.
 *
 * Threading: one engine thread runs an epoll loop and a timer heap. Every piece of
 * shared state is guarded by one mutex; the engine thread never touches Python
 * objects and never takes the GIL; Python-facing calls take the mutex for a few
 * microseconds. Handbacks are queued and announced on an eventfd that the asyncio
 * loop watches.
 *
 * Every wait is bounded: epoll_wait at most one second at a time, every attempt by
 * its deadline, close() by a join that the thread answers within one loop turn.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "llhttp.h"

#define BODY_CAP_BYTES (10 * 1024)   /* kubelet reads at most 10 KiB of a body */
#define GRAIN_SECONDS 0.005          /* ticks are batched on a 5 ms grid, as in Python */
#define MAX_WAIT_MS 1000             /* epoll_wait never waits longer than this */
#define LATE_BUCKET_SECONDS 0.00025  /* lateness histogram: 0.25 ms buckets ... */
#define LATE_BUCKETS 400             /* ... up to 100 ms, plus one overflow bucket */
#define MAX_BOUNDS 32
#define WAKE_ID UINT64_MAX

/* Why a lane ended (the tick handed back to Python). */
enum handback_reason {
    REASON_DIFFERENT = 1,  /* the answer was not the settled success */
    REASON_TIMEOUT = 2,    /* no answer within timeoutSeconds */
    REASON_STALE = 3,      /* the guest's cached addresses expired: Python looks again */
    REASON_HOST = 4,       /* this host could not make a socket */
};

enum phase { IDLE, CONNECTING, READING };

typedef struct lane {
    uint64_t id;            /* generation << 24 | slot; 0 = free */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *request;          /* NULL: tcpSocket (connect, then reset) */
    size_t request_len;
    int expect_status;
    double timeout, period, tick, valid_until;
    /* the attempt in flight */
    enum phase phase;
    int fd;
    size_t sent;
    size_t body;
    int headers_done;
    int verdict;            /* set by the llhttp callbacks: 0 none, 1 same, -1 different */
    double started_mono, started_wall, deadline;
    llhttp_t parser;
    /* timer heap */
    size_t heap_index;      /* SIZE_MAX: not in the heap */
    double due;
    /* silent successes not yet read by Python */
    uint64_t silent;
    double duration_sum, last_started_wall, last_duration;
    uint64_t *buckets;      /* nbounds + 1 */
} lane_t;

typedef struct {
    uint64_t id;
    int reason;
    double tick, started_wall, duration;
} report_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_t thread;
    int thread_started;
    int stopping;
    int closed;
    int epfd, wake_fd, notify_fd;
    lane_t **slots;
    size_t nslots;
    uint32_t *generations;
    size_t *free_slots;
    size_t nfree;
    size_t live;
    lane_t **heap;
    size_t heap_len, heap_cap;
    report_t *reports;
    size_t nreports, reports_cap;
    double bounds[MAX_BOUNDS];
    int nbounds;
    uint64_t late[LATE_BUCKETS + 1];
    uint64_t late_count;
    llhttp_settings_t settings;
} Engine;

/* -- clocks ------------------------------------------------------------------ */

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* time.monotonic() and asyncio's loop.time() */
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* -- timer heap (min-heap on lane->due) ----------------------------------------- */

static void heap_swap(Engine *e, size_t a, size_t b) {
    lane_t *t = e->heap[a];
    e->heap[a] = e->heap[b];
    e->heap[b] = t;
    e->heap[a]->heap_index = a;
    e->heap[b]->heap_index = b;
}

static void heap_up(Engine *e, size_t i) {
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (e->heap[parent]->due <= e->heap[i]->due)
            break;
        heap_swap(e, parent, i);
        i = parent;
    }
}

static void heap_down(Engine *e, size_t i) {
    for (;;) {
        size_t left = 2 * i + 1, right = left + 1, least = i;
        if (left < e->heap_len && e->heap[left]->due < e->heap[least]->due)
            least = left;
        if (right < e->heap_len && e->heap[right]->due < e->heap[least]->due)
            least = right;
        if (least == i)
            return;
        heap_swap(e, i, least);
        i = least;
    }
}

static void heap_remove(Engine *e, lane_t *lane) {
    size_t i = lane->heap_index;
    if (i == SIZE_MAX)
        return;
    lane->heap_index = SIZE_MAX;
    e->heap_len--;
    if (i == e->heap_len)
        return;
    e->heap[i] = e->heap[e->heap_len];
    e->heap[i]->heap_index = i;
    heap_up(e, i);
    heap_down(e, e->heap[i]->heap_index);
}

/* Put `lane` in the heap at `due` (moving it if it is there). Returns 0 or -1 (ENOMEM). */
static int heap_set(Engine *e, lane_t *lane, double due) {
    if (lane->heap_index != SIZE_MAX) {
        double before = lane->due;
        lane->due = due;
        if (due < before)
            heap_up(e, lane->heap_index);
        else
            heap_down(e, lane->heap_index);
        return 0;
    }
    if (e->heap_len == e->heap_cap) {
        size_t cap = e->heap_cap ? e->heap_cap * 2 : 256;
        lane_t **grown = realloc(e->heap, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        e->heap = grown;
        e->heap_cap = cap;
    }
    lane->due = due;
    lane->heap_index = e->heap_len;
    e->heap[e->heap_len++] = lane;
    heap_up(e, lane->heap_index);
    return 0;
}

/* -- lanes --------------------------------------------------------------------- */

static lane_t *lane_by_id(Engine *e, uint64_t id) {
    size_t slot = (size_t)(id & 0xFFFFFF);
    if (slot >= e->nslots || e->slots[slot] == NULL || e->slots[slot]->id != id)
        return NULL;
    return e->slots[slot];
}

static void lane_close_socket(lane_t *lane) {
    if (lane->fd >= 0) {
        /* SO_LINGER 0 was set: close() sends a reset and leaves no TIME_WAIT behind. */
        close(lane->fd);
        lane->fd = -1;
    }
    lane->phase = IDLE;
}

static void lane_free(Engine *e, lane_t *lane) {
    size_t slot = (size_t)(lane->id & 0xFFFFFF);
    lane_close_socket(lane);
    heap_remove(e, lane);
    e->slots[slot] = NULL;
    e->free_slots[e->nfree++] = slot;
    e->live--;
    free(lane->request);
    free(lane->buckets);
    free(lane);
}

static void signal_fd(int fd) {
    uint64_t one = 1;
    ssize_t written = write(fd, &one, sizeof one);
    (void)written;  /* EAGAIN: the counter is already non-zero, the reader will wake */
}

/* End `lane`: queue its tick for Python and free it. Called with the mutex held. */
static void hand_back(Engine *e, lane_t *lane, int reason, double now) {
    if (e->nreports == e->reports_cap) {
        size_t cap = e->reports_cap ? e->reports_cap * 2 : 64;
        report_t *grown = realloc(e->reports, cap * sizeof *grown);
        if (grown == NULL) {
            /* Out of memory: keep the lane and try again on its next deadline. */
            lane_close_socket(lane);
            heap_set(e, lane, now + 0.1);
            return;
        }
        e->reports = grown;
        e->reports_cap = cap;
    }
    report_t *report = &e->reports[e->nreports++];
    report->id = lane->id;
    report->reason = reason;
    report->tick = lane->tick;
    report->started_wall = lane->phase == IDLE ? 0.0 : lane->started_wall;
    report->duration = lane->phase == IDLE ? 0.0 : now - lane->started_mono;
    /* The lane's silent successes are folded into its report by take_reports(). */
    lane_close_socket(lane);
    heap_remove(e, lane);
    /* The lane stays in its slot, marked ended, until Python takes the report:
       its silent counts travel with it. */
    lane->expect_status = -1;
    if (e->nreports == 1)
        signal_fd(e->notify_fd);
}

static int lane_ended(const lane_t *lane) {
    return lane->expect_status == -1;
}

static void record_success(Engine *e, lane_t *lane, double now) {
    double seconds = now - lane->started_mono;
    int i = 0;
    while (i < e->nbounds && e->bounds[i] < seconds)  /* bisect_left, as metrics.py */
        i++;
    lane->buckets[i]++;
    lane->silent++;
    lane->duration_sum += seconds;
    lane->last_started_wall = lane->started_wall;
    lane->last_duration = seconds;
    lane_close_socket(lane);
    /* The next tick; ticks missed because this one ran long are skipped, not run late. */
    double tick = lane->tick + lane->period;
    if (tick < now)
        tick += (floor((now - tick) / lane->period) + 1) * lane->period;
    lane->tick = tick;
    heap_set(e, lane, tick);
}

/* -- llhttp callbacks: decide as the Python handler would ------------------------- */

static int on_headers_complete(llhttp_t *parser) {
    lane_t *lane = parser->data;
    lane->headers_done = 1;
    if (parser->status_code != lane->expect_status) {
        lane->verdict = -1;
        return HPE_PAUSED;
    }
    return HPE_OK;
}

static int on_body(llhttp_t *parser, const char *at, size_t length) {
    lane_t *lane = parser->data;
    (void)at;
    lane->body += length;
    if (lane->body >= BODY_CAP_BYTES) {
        lane->verdict = 1;  /* read no more than 10 KiB */
        return HPE_PAUSED;
    }
    return HPE_OK;
}

static int on_message_complete(llhttp_t *parser) {
    lane_t *lane = parser->data;
    lane->verdict = 1;
    return HPE_PAUSED;
}

/* -- one attempt ---------------------------------------------------------------- */

static void start_attempt(Engine *e, lane_t *lane, double now) {
    static const struct linger reset_on_close = {1, 0};
    int fd = socket(lane->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        hand_back(e, lane, REASON_HOST, now);
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset_on_close, sizeof reset_on_close);
    lane->fd = fd;
    lane->phase = CONNECTING;
    lane->started_mono = now;
    lane->started_wall = now_wall();
    lane->deadline = now + lane->timeout;
    lane->sent = lane->body = 0;
    lane->headers_done = lane->verdict = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.u64 = lane->id};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        hand_back(e, lane, REASON_HOST, now);
        return;
    }
    if (connect(fd, (struct sockaddr *)&lane->addr, lane->addrlen) < 0
            && errno != EINPROGRESS) {
        hand_back(e, lane, REASON_DIFFERENT, now);  /* refused, unreachable: Python says which */
        return;
    }
    heap_set(e, lane, lane->deadline);
    /* Edge-triggered: the connection's completion arrives as an event, even when
       connect() finished at once. */
}

static void read_answer(Engine *e, lane_t *lane, double now) {
    char buffer[16384];
    for (;;) {
        ssize_t got = recv(lane->fd, buffer, sizeof buffer, 0);
        if (got > 0) {
            llhttp_errno_t err = llhttp_execute(&lane->parser, buffer, (size_t)got);
            if (lane->verdict != 0 || err == HPE_PAUSED_UPGRADE) {
                if (lane->verdict < 0)
                    hand_back(e, lane, REASON_DIFFERENT, now);
                else
                    record_success(e, lane, now);
                return;
            }
            if (err != HPE_OK) {
                hand_back(e, lane, REASON_DIFFERENT, now);  /* llhttp rejected the answer */
                return;
            }
            continue;
        }
        if (got == 0) {
            /* End of stream: it ends an EOF-delimited body, if the headers are in
               (llhttp_finish then calls on_message_complete, which pauses). */
            llhttp_errno_t err = llhttp_finish(&lane->parser);
            if (lane->verdict > 0 || (err == HPE_OK && lane->headers_done && lane->verdict == 0))
                record_success(e, lane, now);
            else
                hand_back(e, lane, REASON_DIFFERENT, now);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        if (errno == EINTR)
            continue;
        hand_back(e, lane, REASON_DIFFERENT, now);  /* reset mid-answer */
        return;
    }
}

static void send_request(Engine *e, lane_t *lane, double now) {
    while (lane->sent < lane->request_len) {
        ssize_t put = send(lane->fd, lane->request + lane->sent, lane->request_len - lane->sent,
                           MSG_NOSIGNAL);
        if (put > 0) {
            lane->sent += (size_t)put;
            continue;
        }
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;  /* the next EPOLLOUT edge continues */
        hand_back(e, lane, REASON_DIFFERENT, now);
        return;
    }
    if (lane->phase == CONNECTING) {
        lane->phase = READING;
        llhttp_init(&lane->parser, HTTP_RESPONSE, &e->settings);
        lane->parser.data = lane;
    }
}

static void on_io(Engine *e, lane_t *lane, uint32_t events, double now) {
    if (lane->phase == CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        int error = 0;
        socklen_t len = sizeof error;
        if (getsockopt(lane->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0 || error != 0) {
            hand_back(e, lane, REASON_DIFFERENT, now);
            return;
        }
        if (lane->request == NULL) {
            record_success(e, lane, now);  /* tcpSocket: connected is the whole answer */
            return;
        }
        send_request(e, lane, now);  /* READING once the whole request is out */
        if (lane->phase != READING)
            return;
    }
    if (lane->phase == READING && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        read_answer(e, lane, now);
}

/* -- the engine thread ------------------------------------------------------------- */

static void run_due(Engine *e, double now) {
    while (e->heap_len > 0 && e->heap[0]->due <= now) {
        lane_t *lane = e->heap[0];
        heap_remove(e, lane);
        if (lane->phase != IDLE) {
            hand_back(e, lane, REASON_TIMEOUT, now);
            continue;
        }
        if (now >= lane->valid_until) {
            hand_back(e, lane, REASON_STALE, now);
            continue;
        }
        double late = now - lane->tick;
        size_t bucket = late <= 0 ? 0
                      : late >= LATE_BUCKETS * LATE_BUCKET_SECONDS ? LATE_BUCKETS
                      : (size_t)(late / LATE_BUCKET_SECONDS);
        e->late[bucket]++;
        e->late_count++;
        start_attempt(e, lane, now);
    }
}

static int wait_ms(Engine *e, double now) {
    if (e->heap_len == 0)
        return MAX_WAIT_MS;
    double due = e->heap[0]->due;
    /* Round up to the grid, so the ticks of many lanes are run by one wake-up. */
    double slot = ceil(due / GRAIN_SECONDS) * GRAIN_SECONDS;
    double ms = ceil((slot - now) * 1000.0);
    if (ms < 0)
        return 0;
    return ms > MAX_WAIT_MS ? MAX_WAIT_MS : (int)ms;
}

static void *engine_main(void *arg) {
    Engine *e = arg;
    struct epoll_event events[256];
    pthread_mutex_lock(&e->mu);
    while (!e->stopping) {
        double now = now_mono();
        run_due(e, now);
        int timeout = wait_ms(e, now);
        pthread_mutex_unlock(&e->mu);
        int n = epoll_wait(e->epfd, events, 256, timeout);
        pthread_mutex_lock(&e->mu);
        now = now_mono();
        for (int i = 0; i < n; i++) {
            uint64_t id = events[i].data.u64;
            if (id == WAKE_ID) {
                uint64_t count;
                ssize_t got = read(e->wake_fd, &count, sizeof count);
                (void)got;
                continue;
            }
            lane_t *lane = lane_by_id(e, id);
            if (lane == NULL || lane_ended(lane) || lane->phase == IDLE)
                continue;  /* recalled or ended since epoll_wait returned */
            on_io(e, lane, events[i].events, now);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* -- Python: Engine ---------------------------------------------------------------- */

static int engine_init(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"duration_buckets", NULL};
    PyObject *bounds = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &bounds))
        return -1;
    PyObject *seq = PySequence_Fast(bounds, "duration_buckets must be a sequence of seconds");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_BOUNDS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d duration buckets", MAX_BOUNDS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        double bound = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (bound == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        e->bounds[i] = bound;
    }
    Py_DECREF(seq);
    e->nbounds = (int)n;
    if (e->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "Engine is already running");
        return -1;
    }
    llhttp_settings_init(&e->settings);
    e->settings.on_headers_complete = on_headers_complete;
    e->settings.on_body = on_body;
    e->settings.on_message_complete = on_message_complete;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->epfd < 0 || e->wake_fd < 0 || e->notify_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_ID};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wake_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot create the engine's mutex");
        return -1;
    }
    int err = pthread_create(&e->thread, NULL, engine_main, e);
    if (err != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        pthread_mutex_destroy(&e->mu);
        return -1;
    }
    e->thread_started = 1;
    return 0;
}

static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e != NULL)
        e->epfd = e->wake_fd = e->notify_fd = -1;
    return (PyObject *)e;
}

static void engine_shutdown(Engine *e) {
    if (e->closed)
        return;
    e->closed = 1;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stopping = 1;
        pthread_mutex_unlock(&e->mu);
        signal_fd(e->wake_fd);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(e->thread, NULL);  /* answered within one loop turn (<= 1 s) */
        Py_END_ALLOW_THREADS
        for (size_t i = 0; i < e->nslots; i++)
            if (e->slots[i] != NULL)
                lane_free(e, e->slots[i]);
        pthread_mutex_destroy(&e->mu);
    }
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    if (e->notify_fd >= 0)
        close(e->notify_fd);
    e->epfd = e->wake_fd = e->notify_fd = -1;
    free(e->slots);
    free(e->generations);
    free(e->free_slots);
    free(e->heap);
    free(e->reports);
    e->slots = NULL;
    e->generations = NULL;
    e->free_slots = NULL;
    e->heap = NULL;
    e->reports = NULL;
    e->nslots = e->nfree = e->heap_len = e->heap_cap = e->nreports = e->reports_cap = 0;
}

static void engine_dealloc(Engine *e) {
    engine_shutdown(e);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int check_open(Engine *e) {
    if (e->closed || !e->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "the engine is closed");
        return -1;
    }
    return 0;
}

static int parse_address(const char *host, int port, lane_t *lane) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&lane->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&lane->addr;
    memset(&lane->addr, 0, sizeof lane->addr);
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        lane->addrlen = sizeof *v4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        lane->addrlen = sizeof *v6;
        return 0;
    }
    return -1;
}

/* Find a free slot, growing the tables. Returns the slot or SIZE_MAX (ENOMEM). */
static size_t take_slot(Engine *e) {
    if (e->nfree == 0) {
        size_t grow = e->nslots ? e->nslots : 256;
        size_t total = e->nslots + grow;
        if (total > 0xFFFFFF)
            return SIZE_MAX;
        lane_t **slots = realloc(e->slots, total * sizeof *slots);
        if (slots == NULL)
            return SIZE_MAX;
        e->slots = slots;
        uint32_t *generations = realloc(e->generations, total * sizeof *generations);
        if (generations == NULL)
            return SIZE_MAX;
        e->generations = generations;
        size_t *free_slots = realloc(e->free_slots, total * sizeof *free_slots);
        if (free_slots == NULL)
            return SIZE_MAX;
        e->free_slots = free_slots;
        for (size_t i = total; i > e->nslots; i--) {
            e->slots[i - 1] = NULL;
            e->generations[i - 1] = 0;
            e->free_slots[e->nfree++] = i - 1;
        }
        e->nslots = total;
    }
    return e->free_slots[--e->nfree];
}

static PyObject *engine_offload(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"host", "port", "request", "expect_status", "timeout", "period",
                             "tick", "valid_until", NULL};
    const char *host;
    int port, expect_status;
    Py_buffer request = {0};
    PyObject *request_obj;
    double timeout, period, tick, valid_until;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "siOidddd", kwlist, &host, &port,
                                     &request_obj, &expect_status, &timeout, &period, &tick,
                                     &valid_until))
        return NULL;
    if (check_open(e) < 0)
        return NULL;
    if (port < 1 || port > 65535 || !(timeout > 0) || !(period > 0)) {
        PyErr_SetString(PyExc_ValueError, "port 1-65535, timeout and period > 0 required");
        return NULL;
    }
    lane_t *lane = calloc(1, sizeof *lane);
    if (lane == NULL)
        return PyErr_NoMemory();
    lane->fd = -1;
    lane->heap_index = SIZE_MAX;
    if (parse_address(host, port, lane) < 0) {
        free(lane);
        PyErr_Format(PyExc_ValueError, "%s is not an IP address literal", host);
        return NULL;
    }
    if (request_obj != Py_None) {
        if (PyObject_GetBuffer(request_obj, &request, PyBUF_SIMPLE) < 0) {
            free(lane);
            return NULL;
        }
        lane->request = malloc(request.len ? (size_t)request.len : 1);
        if (lane->request != NULL)
            memcpy(lane->request, request.buf, (size_t)request.len);
        lane->request_len = (size_t)request.len;
        PyBuffer_Release(&request);
        if (lane->request == NULL) {
            free(lane);
            return PyErr_NoMemory();
        }
    }
    lane->buckets = calloc((size_t)e->nbounds + 1, sizeof *lane->buckets);
    if (lane->buckets == NULL) {
        free(lane->request);
        free(lane);
        return PyErr_NoMemory();
    }
    lane->expect_status = lane->request != NULL ? expect_status : 0;
    lane->timeout = timeout;
    lane->period = period;
    lane->tick = tick;
    lane->valid_until = valid_until;

    pthread_mutex_lock(&e->mu);
    size_t slot = take_slot(e);
    if (slot == SIZE_MAX || heap_set(e, lane, tick) < 0) {
        if (slot != SIZE_MAX)
            e->free_slots[e->nfree++] = slot;
        pthread_mutex_unlock(&e->mu);
        free(lane->request);
        free(lane->buckets);
        free(lane);
        return PyErr_NoMemory();
    }
    e->generations[slot]++;
    lane->id = ((uint64_t)(e->generations[slot] & 0xFFFFFF) << 24 | slot) + ((uint64_t)1 << 48);
    e->slots[slot] = lane;
    e->live++;
    int first = lane->heap_index == 0;
    pthread_mutex_unlock(&e->mu);
    if (first)
        signal_fd(e->wake_fd);  /* the engine may be sleeping past this lane's tick */
    return PyLong_FromUnsignedLongLong(lane->id);
}

/* (silent, buckets, duration_sum, last_started_wall, last_duration); resets the counts. */
static PyObject *take_counts(Engine *e, lane_t *lane) {
    PyObject *buckets = PyTuple_New(e->nbounds + 1);
    if (buckets == NULL)
        return NULL;
    for (int i = 0; i <= e->nbounds; i++) {
        PyObject *count = PyLong_FromUnsignedLongLong(lane->buckets[i]);
        if (count == NULL) {
            Py_DECREF(buckets);
            return NULL;
        }
        PyTuple_SET_ITEM(buckets, i, count);
    }
    PyObject *counts = Py_BuildValue("(KNddd)", (unsigned long long)lane->silent, buckets,
                                     lane->duration_sum, lane->last_started_wall,
                                     lane->last_duration);
    if (counts == NULL)
        return NULL;
    memset(lane->buckets, 0, ((size_t)e->nbounds + 1) * sizeof *lane->buckets);
    lane->silent = 0;
    lane->duration_sum = 0.0;
    return counts;
}

static PyObject *engine_recall(Engine *e, PyObject *arg) {
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    if (id == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (check_open(e) < 0)
        return NULL;
    pthread_mutex_lock(&e->mu);
    lane_t *lane = lane_by_id(e, id);
    if (lane == NULL || lane_ended(lane)) {
        pthread_mutex_unlock(&e->mu);
        Py_RETURN_NONE;  /* unknown, or handed back already: its report says the rest */
    }
    PyObject *counts = take_counts(e, lane);
    if (counts != NULL)
        lane_free(e, lane);
    pthread_mutex_unlock(&e->mu);
    return counts;
}

static PyObject *engine_take_reports(Engine *e, PyObject *unused) {
    (void)unused;
    if (check_open(e) < 0)
        return NULL;
    uint64_t drained;
    ssize_t got = read(e->notify_fd, &drained, sizeof drained);
    (void)got;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    pthread_mutex_lock(&e->mu);
    size_t done = 0;
    for (; done < e->nreports; done++) {
        report_t *report = &e->reports[done];
        lane_t *lane = lane_by_id(e, report->id);
        PyObject *counts = lane != NULL ? take_counts(e, lane) : (Py_INCREF(Py_None), Py_None);
        if (counts == NULL)
            break;
        PyObject *item = Py_BuildValue("(KidddN)", (unsigned long long)report->id,
                                       report->reason, report->tick, report->started_wall,
                                       report->duration, counts);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            break;
        }
        Py_DECREF(item);
        if (lane != NULL)
            lane_free(e, lane);
    }
    /* Keep whatever could not be delivered (out of memory) for the next call. */
    memmove(e->reports, e->reports + done, (e->nreports - done) * sizeof *e->reports);
    e->nreports -= done;
    if (e->nreports > 0)
        signal_fd(e->notify_fd);
    pthread_mutex_unlock(&e->mu);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *engine_fold(Engine *e, PyObject *arg) {
    /* fold(None): every running lane with new silent successes; fold(id): that lane. */
    if (check_open(e) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    unsigned long long only = 0;
    if (arg != Py_None) {
        only = PyLong_AsUnsignedLongLong(arg);
        if (only == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(out);
            return NULL;
        }
    }
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < e->nslots; i++) {
        lane_t *lane = e->slots[i];
        if (lane == NULL || lane_ended(lane) || lane->silent == 0)
            continue;
        if (only != 0 && lane->id != only)
            continue;
        PyObject *counts = take_counts(e, lane);
        PyObject *item = counts ? Py_BuildValue("(KN)", (unsigned long long)lane->id, counts)
                                : NULL;
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            break;
        }
        Py_DECREF(item);
    }
    pthread_mutex_unlock(&e->mu);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *engine_lateness(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"reset", NULL};
    int reset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p", kwlist, &reset))
        return NULL;
    if (check_open(e) < 0)
        return NULL;
    PyObject *buckets = PyTuple_New(LATE_BUCKETS + 1);
    if (buckets == NULL)
        return NULL;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i <= LATE_BUCKETS; i++)
        PyTuple_SET_ITEM(buckets, i, PyLong_FromUnsignedLongLong(e->late[i]));
    if (reset) {
        memset(e->late, 0, sizeof e->late);
        e->late_count = 0;
    }
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i <= LATE_BUCKETS; i++)
        if (PyTuple_GET_ITEM(buckets, i) == NULL) {
            Py_DECREF(buckets);
            return NULL;
        }
    return Py_BuildValue("(dN)", LATE_BUCKET_SECONDS, buckets);
}

static PyObject *engine_fileno(Engine *e, PyObject *unused) {
    (void)unused;
    if (check_open(e) < 0)
        return NULL;
    return PyLong_FromLong(e->notify_fd);
}

static PyObject *engine_close(Engine *e, PyObject *unused) {
    (void)unused;
    engine_shutdown(e);
    Py_RETURN_NONE;
}

static Py_ssize_t engine_len(Engine *e) {
    if (e->closed || !e->thread_started)
        return 0;
    pthread_mutex_lock(&e->mu);
    Py_ssize_t live = (Py_ssize_t)e->live;
    pthread_mutex_unlock(&e->mu);
    return live;
}

static PyMethodDef engine_methods[] = {
    {"offload", (PyCFunction)(void (*)(void))engine_offload, METH_VARARGS | METH_KEYWORDS,
     "offload(host, port, request, expect_status, timeout, period, tick, valid_until) -> id\n"
     "Repeat a settled probe from `tick` (monotonic) every `period` until its answer\n"
     "differs or `valid_until` passes. request None: tcpSocket."},
    {"recall", (PyCFunction)engine_recall, METH_O,
     "recall(id) -> counts or None: stop the lane; None if it has already been handed back."},
    {"take_reports", (PyCFunction)engine_take_reports, METH_NOARGS,
     "take_reports() -> [(id, reason, tick, started_wall, duration, counts)]: lanes ended."},
    {"fold", (PyCFunction)engine_fold, METH_O,
     "fold(id or None) -> [(id, counts)]: silent successes since the last fold."},
    {"lateness", (PyCFunction)(void (*)(void))engine_lateness, METH_VARARGS | METH_KEYWORDS,
     "lateness(reset=False) -> (bucket_seconds, counts): how late ticks started."},
    {"fileno", (PyCFunction)engine_fileno, METH_NOARGS,
     "The eventfd that becomes readable when reports are waiting."},
    {"close", (PyCFunction)engine_close, METH_NOARGS,
     "Stop the engine thread and drop every lane (their counts are lost)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods engine_as_sequence = {
    .sq_length = (lenfunc)engine_len,
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vmhealth._fastlane.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Engine(duration_buckets): repeats settled network probes in a thread of its own.",
    .tp_new = engine_new,
    .tp_init = (initproc)engine_init,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_methods = engine_methods,
    .tp_as_sequence = &engine_as_sequence,
};

static struct PyModuleDef fastlane_module = {
    PyModuleDef_HEAD_INIT, "vmhealth._fastlane",
    "Native repetition of settled network probes (see src/native/fastlane.c).", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastlane(void) {
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&fastlane_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(module, "Engine", (PyObject *)&EngineType) < 0
            || PyModule_AddIntConstant(module, "DIFFERENT", REASON_DIFFERENT) < 0
            || PyModule_AddIntConstant(module, "TIMEOUT", REASON_TIMEOUT) < 0
            || PyModule_AddIntConstant(module, "STALE", REASON_STALE) < 0
            || PyModule_AddIntConstant(module, "HOST", REASON_HOST) < 0
            || PyModule_AddIntConstant(module, "BODY_CAP_BYTES", BODY_CAP_BYTES) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
