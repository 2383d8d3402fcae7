/* The inner loop of a shift layer on an AVX-512 host, in four forms, timed on one core (see
   tap_loops.py, which builds and runs this file and prints the ratios).

   A tap adds one input row (64 byte lanes, 64 positions) into an output channel's accumulator.
   - current:  what the generated C does: the tap's offset from a list, an unaligned 64-byte load
               (almost always split over two cache lines), one add;
   - aligned:  the same with offsets on 64-byte boundaries (no load split over two cache lines);
   - shared4:  one load added into four channels' accumulators (weights compiled into code);
   - pairs:    two taps per step through a 32-entry int16 table per weight pair (VPERMW), four
               channels sharing the index load (weights stay data; no exponent groups, no widening).
   Each prints nanoseconds per channel-tap over 64 positions. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define TAPS 576 /* a 64-channel 3x3 layer */
#define REPEAT 100000

static uint8_t in[64 * 100 + 256] __attribute__((aligned(64)));
static uint16_t off_random[TAPS], off_aligned[TAPS];
static int16_t tables[64 * 32] __attribute__((aligned(64)));
static uint16_t pair_index[TAPS / 2 * 32] __attribute__((aligned(64)));
static uint8_t pair_code[4][TAPS / 2];

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((noinline)) static __m512i one_channel(const uint16_t *off)
{
    __m512i acc = _mm512_setzero_si512();
    for (int j = 0; j < TAPS; j++) acc = _mm512_add_epi8(acc, _mm512_loadu_si512(in + off[j]));
    return acc;
}

__attribute__((noinline)) static void four_channels(__m512i *r)
{
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (int j = 0; j < TAPS; j++) {
        const __m512i v = _mm512_loadu_si512(in + off_random[j]);
        a = _mm512_add_epi8(a, v); b = _mm512_sub_epi8(b, v); c = _mm512_add_epi8(c, v); d = _mm512_sub_epi8(d, v);
    }
    r[0] = a; r[1] = b; r[2] = c; r[3] = d;
}

__attribute__((noinline)) static void pair_tables(__m512i *r)
{
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (int p = 0; p < TAPS / 2; p++) {
        const __m512i ix = _mm512_load_si512(pair_index + 32 * p);
        a = _mm512_add_epi16(a, _mm512_permutexvar_epi16(ix, _mm512_load_si512(tables + 32 * pair_code[0][p])));
        b = _mm512_add_epi16(b, _mm512_permutexvar_epi16(ix, _mm512_load_si512(tables + 32 * pair_code[1][p])));
        c = _mm512_add_epi16(c, _mm512_permutexvar_epi16(ix, _mm512_load_si512(tables + 32 * pair_code[2][p])));
        d = _mm512_add_epi16(d, _mm512_permutexvar_epi16(ix, _mm512_load_si512(tables + 32 * pair_code[3][p])));
    }
    r[0] = a; r[1] = b; r[2] = c; r[3] = d;
}

int main(void)
{
    volatile uint8_t sink = 0;
    __m512i r[4];
    double t;
    srand(1);
    for (size_t i = 0; i < sizeof in; i++) in[i] = (uint8_t)(rand() & 7);
    for (int j = 0; j < TAPS; j++) {
        off_random[j] = (uint16_t)(rand() % (64 * 90));
        off_aligned[j] = (uint16_t)((rand() % 90) * 64);
    }
    for (int i = 0; i < 64 * 32; i++) tables[i] = (int16_t)(rand() % 100);
    for (int i = 0; i < TAPS / 2 * 32; i++) pair_index[i] = (uint16_t)(rand() % 25);
    for (int c = 0; c < 4; c++)
        for (int p = 0; p < TAPS / 2; p++) pair_code[c][p] = (uint8_t)(rand() % 64);
#define TIME(name, per, body)                                                   \
    t = now();                                                                  \
    for (int k = 0; k < REPEAT; k++) { body; }                                  \
    t = now() - t;                                                              \
    printf("%s %.4f\n", name, t / REPEAT / TAPS / (per) * 1e9);
    TIME("current", 1, r[0] = one_channel(off_random); sink ^= ((uint8_t *)r)[0])
    TIME("aligned", 1, r[0] = one_channel(off_aligned); sink ^= ((uint8_t *)r)[0])
    TIME("shared4", 4, four_channels(r); sink ^= ((uint8_t *)r)[0])
    TIME("pairs", 2, pair_tables(r); sink ^= ((uint8_t *)r)[0]) /* 4 channels over 32 positions */
    return sink == 255; /* keeps the results alive */
}
