/* moe_rows — where moe_adapter_forward puts each expert's rows (gathered, pre, act, and the
 * scratch rows of both passes), as backend.c and the CUDA backend compute it.
 *
 * The groups of routed pairs (perm's order, offsets' bounds) follow each other; expert e's
 * group takes rows starts[e] to starts[e + 1]: its pairs in order, then rows of zeros. With
 * align 1 and no room to spare the rows are perm's order itself (starts = offsets: the CPU
 * backend, and CUDA's default). Else:
 *  - uniform: every group padded to the same S rows, S the largest group rounded up to a
 *    multiple of align, where the E S rows fit in the rows sized (pesc_adapter_rows); then the
 *    experts' products are one strided batched product each;
 *  - packed: otherwise each group rounded up to a multiple of align rows, which always fit.
 * The layout depends on nothing but the group sizes, the token count and the settings, so the
 * backward, and a recomputed forward, find the rows where the forward put them.
 * Included by C and by CUDA (host code). */
#ifndef PESC_MOE_ROWS_H
#define PESC_MOE_ROWS_H

#include <math.h>
#include <stddef.h>

/* The experts a layout takes (the CUDA kernel that maps rows takes the bounds by value); more
 * keep perm's order. As many as --experts allows (model_forward.c checks pesc.h's
 * PESC_MAX_EXPERTS against it). */
#define PESC_ADAPTER_ROWS_EXPERTS 256

/* Whether pairs (N K) slots of E experts are laid out: settings other than align 1 and room
 * 1, at most PESC_ADAPTER_ROWS_EXPERTS experts, and at least align slots an expert (fewer,
 * as when a few sequences decode a token each, would be mostly rows of zeros). */
static inline int pesc_adapter_layout_on(size_t pairs, int E, int align, double room)
{
    return E <= PESC_ADAPTER_ROWS_EXPERTS && (align > 1 || room > 1.0) &&
           pairs >= (size_t)E * (size_t)align;
}

/* Rows of the adapters' buffers for pairs slots of E experts: where laid out, the packed
 * layout's most (every group align - 1 rows past a multiple), and (room - 1) pairs more for
 * the uniform layout to fit in. */
static inline size_t pesc_adapter_rows(size_t pairs, int E, int align, double room)
{
    if (!pesc_adapter_layout_on(pairs, E, align, room))
        return pairs;
    size_t rows = pairs + (size_t)E * (size_t)(align - 1);
    if (room > 1.0)
        rows += (size_t)ceil((room - 1.0) * (double)pairs);
    return rows;
}

/* starts (E + 1) for the groups offsets (E + 1) bounds, in rows sized for pairs slots (the
 * offsets themselves where not laid out); returns S, the rows of every group, when the
 * layout is uniform, else 0. */
static inline int pesc_adapter_starts(int *starts, const int *offsets, int E, int align,
                                      double room, size_t pairs)
{
    starts[0] = 0;
    if (!pesc_adapter_layout_on(pairs, E, align, room)) {
        for (int e = 0; e < E; e++)
            starts[e + 1] = offsets[e + 1];
        return 0;
    }
    int most = 0;
    for (int e = 0; e < E; e++)
        most = offsets[e + 1] - offsets[e] > most ? offsets[e + 1] - offsets[e] : most;
    int even = (most + align - 1) / align * align;
    int uniform = most > 0 && (size_t)E * (size_t)even <= pesc_adapter_rows(pairs, E, align,
                                                                              room);
    for (int e = 0; e < E; e++) {
        int n = offsets[e + 1] - offsets[e];
        starts[e + 1] = starts[e] + (uniform ? even : (n + align - 1) / align * align);
    }
    return uniform ? even : 0;
}

#endif
