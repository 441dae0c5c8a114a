/* moe_rows — where moe_adapter_forward puts each expert's rows (gathered, pre, act, and the
 * scratch rows of both passes), as backend.c and the CUDA backend compute it.
 *
 * With align 1 and no room to spare the rows are perm's order itself (the CPU backend, and
 * CUDA's default): expert e's pairs on rows offsets[e] on. Else the rows are in two parts:
 *  - a block: every expert's first pairs, `block` rows each, expert e's on rows e * block on
 *    (the rest of them zeros where it has fewer): alike, so the experts' products over it are
 *    one strided batched product each;
 *  - after it, each expert's pairs past its block, on rows starts[e] on, the group rounded up
 *    to a multiple of align rows with zeros (starts[0] = E * block).
 * block is the largest multiple of align for which both parts fit in the rows sized
 * (pesc_adapter_rows): the whole of every group where room allows (nothing after the block),
 * none at all where even the smallest group would leave too many zeros (all packed after it).
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

/* Rows of the adapters' buffers for pairs slots of E experts: where laid out, every group's
 * rounding up (align - 1 rows an expert), and (room - 1) pairs more for a larger block. */
static inline size_t pesc_adapter_rows(size_t pairs, int E, int align, double room)
{
    if (!pesc_adapter_layout_on(pairs, E, align, room))
        return pairs;
    size_t rows = pairs + (size_t)E * (size_t)(align - 1);
    if (room > 1.0)
        rows += (size_t)ceil((room - 1.0) * (double)pairs);
    return rows;
}

/* The rows of the part after a block of `block` rows an expert, for groups of the sizes
 * offsets (E + 1) bounds, each rounded up to a multiple of align. */
static inline size_t pesc_adapter_rest(const int *offsets, int E, int align, int block)
{
    size_t rows = 0;
    for (int e = 0; e < E; e++) {
        int past = offsets[e + 1] - offsets[e] - block;
        rows += past > 0 ? (size_t)((past + align - 1) / align) * (size_t)align : 0;
    }
    return rows;
}

/* The layout of the groups offsets (E + 1) bounds among pairs slots: returns block, and
 * starts (E + 1) of the groups after it (the offsets themselves, block 0, where the rows keep
 * perm's order). */
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
    size_t rows = pesc_adapter_rows(pairs, E, align, room);
    int block = 0;   /* fits always: the packed groups alone */
    for (int b = align; b < most + align; b += align)
        if ((size_t)E * (size_t)b + pesc_adapter_rest(offsets, E, align, b) <= rows)
            block = b;
    starts[0] = E * block;
    for (int e = 0; e < E; e++) {
        int past = offsets[e + 1] - offsets[e] - block;
        starts[e + 1] = starts[e] + (past > 0 ? (past + align - 1) / align * align : 0);
    }
    return block;
}

/* The row of expert e's i-th pair in that layout. */
static inline int pesc_adapter_row(const int *starts, int block, int e, int i)
{
    return i < block ? e * block + i : starts[e] + i - block;
}

#endif
