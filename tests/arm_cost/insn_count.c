/*
 * Instructions retired by a program under qemu-user (TCG), for tests/arm_cost.sh.
 *
 * A TCG plugin: every translated block gets an inline "add the block's instruction count"
 * operation, so counting costs one add per executed block and no callback into the plugin.
 * At exit the total is written to the file named by the `out=PATH` argument (or to stderr when
 * none is given) as one line: `instructions N vcpus V`. V is the number of guest threads
 * that ran; the count is exact for one thread (the inline add is not atomic across threads).
 *
 * The few plugin API declarations it needs are written here from the interface's documented
 * signatures, so the build needs no qemu header: `cc -shared -fPIC -O2 -o insn_count.so
 * insn_count.c`. Two API generations:
 *   - qemu 4.2 to 8.x (plugin API version 1): qemu_plugin_register_vcpu_tb_exec_inline on a u64;
 *   - qemu 9.0 and later (API version 2 or more; build with -DINSN_COUNT_SCOREBOARD): a
 *     per-vCPU scoreboard, summed at exit.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through, never read */
struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_op {
    QEMU_PLUGIN_INLINE_ADD_U64 = 0,
};

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);

size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const char *qemu_plugin_insn_symbol(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

#define EXPORT __attribute__((visibility("default")))

#ifdef INSN_COUNT_SCOREBOARD
struct qemu_plugin_scoreboard;
typedef struct {
    struct qemu_plugin_scoreboard *score;
    size_t offset;
} qemu_plugin_u64;
struct qemu_plugin_scoreboard *qemu_plugin_scoreboard_new(size_t element_size);
qemu_plugin_u64 qemu_plugin_scoreboard_u64(struct qemu_plugin_scoreboard *score);
uint64_t qemu_plugin_u64_sum(qemu_plugin_u64 entry);
void qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(struct qemu_plugin_tb *tb,
                                                        enum qemu_plugin_op op,
                                                        qemu_plugin_u64 entry, uint64_t imm);
EXPORT int qemu_plugin_version = 2;
static qemu_plugin_u64 counter;
#else
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
EXPORT int qemu_plugin_version = 1;
static uint64_t counter;
#endif

static char out_path[4096];
static char syms_path[4096];
static unsigned int vcpus;

/* Per-symbol counters (syms=PATH): an open-addressed table keyed by the symbol's name pointer
 * (qemu keeps one string per symbol). SYM_SLOTS: more functions than a run of the binary
 * enters; a symbol that finds the table full counts under the last slot ("(table full)"). */
#define SYM_SLOTS 16384
static const char *sym_name[SYM_SLOTS];
#ifdef INSN_COUNT_SCOREBOARD
static struct qemu_plugin_scoreboard *sym_score;
#else
static uint64_t sym_count[SYM_SLOTS];
#endif

static size_t sym_slot(const char *name)
{
    if (!name) {
        name = "?";
    }
    size_t h = ((uintptr_t)name >> 3) % (SYM_SLOTS - 1);
    for (size_t probe = 0; probe < SYM_SLOTS - 1; probe++) {
        size_t i = (h + probe) % (SYM_SLOTS - 1);
        if (sym_name[i] == name) {
            return i;
        }
        if (!sym_name[i]) {
            sym_name[i] = name;
            return i;
        }
    }
    sym_name[SYM_SLOTS - 1] = "(table full)";
    return SYM_SLOTS - 1;
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    uint64_t n = qemu_plugin_tb_n_insns(tb);
#ifdef INSN_COUNT_SCOREBOARD
    qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, counter, n);
#else
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &counter, n);
#endif
    if (syms_path[0] && n > 0) {
        size_t slot = sym_slot(qemu_plugin_insn_symbol(qemu_plugin_tb_get_insn(tb, 0)));
#ifdef INSN_COUNT_SCOREBOARD
        qemu_plugin_u64 entry = {sym_score, slot * sizeof(uint64_t)};
        qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, entry, n);
#else
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &sym_count[slot], n);
#endif
    }
}

static void write_symbols(void)
{
    FILE *f = fopen(syms_path, "w");
    if (!f) {
        fprintf(stderr, "insn_count: cannot write %s\n", syms_path);
        return;
    }
    for (size_t i = 0; i < SYM_SLOTS; i++) {
        if (!sym_name[i]) {
            continue;
        }
#ifdef INSN_COUNT_SCOREBOARD
        qemu_plugin_u64 entry = {sym_score, i * sizeof(uint64_t)};
        uint64_t n = qemu_plugin_u64_sum(entry);
#else
        uint64_t n = sym_count[i];
#endif
        fprintf(f, "%llu %s\n", (unsigned long long)n, sym_name[i]);
    }
    fclose(f);
}

static void on_vcpu_init(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    (void)id;
    if (vcpu_index + 1 > vcpus) {
        vcpus = vcpu_index + 1;
    }
}

static void report_at_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
#ifdef INSN_COUNT_SCOREBOARD
    uint64_t total = qemu_plugin_u64_sum(counter);
#else
    uint64_t total = counter;
#endif
    if (syms_path[0]) {
        write_symbols();
    }
    char line[128];
    snprintf(line, sizeof line, "instructions %llu vcpus %u\n", (unsigned long long)total, vcpus);
    if (out_path[0]) {
        FILE *f = fopen(out_path, "w");
        if (f) {
            fputs(line, f);
            fclose(f);
            return;
        }
    }
    fputs(line, stderr);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof out_path) {
            strcpy(out_path, argv[i] + 4);
        } else if (strncmp(argv[i], "syms=", 5) == 0 && strlen(argv[i] + 5) < sizeof syms_path) {
            strcpy(syms_path, argv[i] + 5);
        } else {
            fprintf(stderr, "insn_count: unknown argument '%s' (out=PATH, syms=PATH)\n", argv[i]);
            return -1;
        }
    }
#ifdef INSN_COUNT_SCOREBOARD
    counter = qemu_plugin_scoreboard_u64(qemu_plugin_scoreboard_new(sizeof(uint64_t)));
    if (syms_path[0]) {
        sym_score = qemu_plugin_scoreboard_new(SYM_SLOTS * sizeof(uint64_t));
    }
#endif
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, report_at_exit, NULL);
    return 0;
}
