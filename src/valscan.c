/*
 * The value scanner's engine (valscan.h). A pass goes block by block: the
 * first one reads the runs, a later one only the blocks that kept
 * candidates (a sparse block only the pages round its candidates). The
 * compare loops give a bitmap of the matching slots, 64 slots at a time
 * with SSE2 where values lie at their natural alignment; the bitmap then
 * becomes the block's, or a list of offsets and values if that is smaller.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define VS_SSE2 1
#endif

#include "scan.h"
#include "valscan.h"

#define BLOCK ((size_t)1 << 20)
/* Candidates of a sparse block less than this apart share one read: a read
 * costs about as much as copying this many bytes. */
#define GAP ((size_t)16 << 10)

typedef union vs_num {
  int8_t i8;
  uint8_t u8;
  int16_t i16;
  uint16_t u16;
  int32_t i32;
  uint32_t u32;
  int64_t i64;
  uint64_t u64;
  float f32;
  double f64;
} vs_num;

/* A pass's test, prepared for the type: a value op is "in [lo, hi]" (never
 * when empty), or with negate "outside it, and not NaN". */
typedef struct vs_cond {
  vs_op op;
  int negate, empty;
  vs_num lo, hi;
  vs_num by;            /* INCREASED_BY / DECREASED_BY, integers: new - old, wrapped */
  double by_lo, by_hi;  /* floats: new - old within [by_lo, by_hi] */
} vs_cond;

typedef struct vs_block {
  uintptr_t base;
  size_t span;         /* slots start in [base, base + span) */
  size_t len;          /* and end by base + len */
  size_t first;        /* slot k is at base + first + k * align */
  size_t nslots, count;
  unsigned char *snap; /* dense: the len bytes as last read */
  uint64_t *bits;      /* dense: the candidate slots; NULL: every slot */
  uint32_t *offs;      /* sparse: the candidates' offsets from base, ascending */
  unsigned char *vals; /* sparse: their values, size bytes each */
  size_t cap;          /* sparse: the candidates offs and vals have room for */
} vs_block;

typedef struct vs_run {
  uintptr_t lo, hi;
} vs_run;

struct vs_scan {
  vs_type type;
  size_t size, align, page;
  uint64_t limit, count;
  vs_run *runs;
  size_t nruns, runcap;
  vs_block *blocks;
  size_t nblocks, blockcap;
  /* the pass */
  vs_cond c;
  int active, first_done;
  size_t run;     /* first pass: the run being read, and where in it */
  uintptr_t at;
  size_t r, w;    /* later passes: the next block to read, where kept ones go */
  uint64_t done, total;
  unsigned char *q, *qmask; /* VS_BYTES: the value, and its mask for rm_scan */
  rm_pattern pat;
  /* buffers */
  unsigned char *scratch;
  size_t scratch_cap;
  uint64_t *tmp;  /* the bitmap of the block being worked on */
  uint64_t *bad;  /* the pages of that block that could not be read */
  size_t badwords;
  uintptr_t bad_base;
  int anybad;
};

/* ---- bitmaps ------------------------------------------------------------------ */

static size_t words(size_t nbits) {
  return (nbits + 63) / 64;
}

static void set_bit(uint64_t *b, size_t k) {
  b[k >> 6] |= (uint64_t)1 << (k & 63);
}

static void clear_bit(uint64_t *b, size_t k) {
  b[k >> 6] &= ~((uint64_t)1 << (k & 63));
}

/* Bits 0..n-1 set, the rest of the last word clear (every bitmap keeps
 * bits past its end clear). */
static void set_all(uint64_t *b, size_t n) {
  memset(b, 0xFF, n / 64 * sizeof *b);
  if (n % 64)
    b[n / 64] = ((uint64_t)1 << (n % 64)) - 1;
}

/* (not __builtin_popcountll: without -mpopcnt it is a libgcc call, and
 * MinGW would then tie the DLL to libgcc_s) */
static unsigned popcount64(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return (unsigned)((x * 0x0101010101010101ULL) >> 56);
}

/* The index of the lowest set bit of x, which is not 0. */
static unsigned lowest64(uint64_t x) {
#if defined(__GNUC__)
  return (unsigned)__builtin_ctzll(x);
#else
  return popcount64((x & (0 - x)) - 1);
#endif
}

static size_t count_bits(const uint64_t *b, size_t n) {
  size_t i, c = 0;
  for (i = 0; i < words(n); i++)
    c += popcount64(b[i]);
  return c;
}

/* The first set bit at k or after, or n. */
static size_t next_bit(const uint64_t *b, size_t k, size_t n) {
  size_t i = k >> 6;
  uint64_t x;
  if (k >= n)
    return n;
  x = b[i] & (~(uint64_t)0 << (k & 63));
  while (x == 0) {
    if (++i >= words(n))
      return n;
    x = b[i];
  }
  k = i * 64 + lowest64(x);
  return k < n ? k : n;
}

/* Keeps the first keep set bits of b and clears the others. */
static void keep_first(uint64_t *b, size_t n, size_t keep) {
  size_t k = 0, i;
  for (; keep > 0; keep--, k++)
    if ((k = next_bit(b, k, n)) >= n)
      return; /* fewer than keep */
  if (k >= n)
    return;
  b[k >> 6] &= ((uint64_t)1 << (k & 63)) - 1;
  for (i = (k >> 6) + 1; i < words(n); i++)
    b[i] = 0;
}

/* ---- the compare loops, per type ------------------------------------------- */

#define IS_NUM(x) ((x) == (x)) /* not NaN */
#define ALWAYS(x) 1
/* new - old == by, in the type's own wrapping arithmetic */
#define BY_INT(UT, x, y, c, NAME) ((UT)((UT)(x) - (UT)(y)) == (UT)(c)->by.NAME)
#define BY_FLOAT(UT, x, y, c, NAME) \
  ((double)(x) - (double)(y) >= (c)->by_lo && (double)(x) - (double)(y) <= (c)->by_hi)

/* For one type: its load, the value test, a loop of it over slots, the
 * test of one new value against the kept one, and a loop of that. */
#define DEFINE_TYPE(NAME, T, UT, NUM, BY)                                                    \
  static T load_##NAME(const unsigned char *p) {                                             \
    T v;                                                                                     \
    memcpy(&v, p, sizeof v);                                                                 \
    return v;                                                                                \
  }                                                                                          \
  static int in_##NAME(T x, const vs_cond *c) {                                              \
    int in = !c->empty && x >= c->lo.NAME && x <= c->hi.NAME;                                \
    return c->negate ? !in && NUM(x) : in;                                                   \
  }                                                                                          \
  static void range_##NAME(const unsigned char *d, size_t first, size_t align, size_t k,     \
                           size_t n, const vs_cond *c, uint64_t *bits) {                     \
    for (; k < n; k++)                                                                       \
      if (in_##NAME(load_##NAME(d + first + k * align), c))                                  \
        set_bit(bits, k);                                                                    \
  }                                                                                          \
  static int test_##NAME(const unsigned char *np, const unsigned char *op, const vs_cond *c) { \
    T x = load_##NAME(np), y = load_##NAME(op);                                              \
    switch (c->op) {                                                                         \
    case VS_INCREASED: return x > y;                                                         \
    case VS_DECREASED: return x < y;                                                         \
    case VS_INCREASED_BY: case VS_DECREASED_BY: return BY(UT, x, y, c, NAME);                \
    default: return in_##NAME(x, c);                                                         \
    }                                                                                        \
  }                                                                                          \
  static void pair_##NAME(const unsigned char *nd, const unsigned char *od, size_t first,    \
                          size_t align, size_t n, const vs_cond *c, uint64_t *bits) {        \
    size_t k;                                                                                \
    for (k = 0; k < n; k++)                                                                  \
      if (test_##NAME(nd + first + k * align, od + first + k * align, c))                    \
        set_bit(bits, k);                                                                    \
  }

DEFINE_TYPE(i8, int8_t, uint8_t, ALWAYS, BY_INT)
DEFINE_TYPE(u8, uint8_t, uint8_t, ALWAYS, BY_INT)
DEFINE_TYPE(i16, int16_t, uint16_t, ALWAYS, BY_INT)
DEFINE_TYPE(u16, uint16_t, uint16_t, ALWAYS, BY_INT)
DEFINE_TYPE(i32, int32_t, uint32_t, ALWAYS, BY_INT)
DEFINE_TYPE(u32, uint32_t, uint32_t, ALWAYS, BY_INT)
DEFINE_TYPE(i64, int64_t, uint64_t, ALWAYS, BY_INT)
DEFINE_TYPE(u64, uint64_t, uint64_t, ALWAYS, BY_INT)
DEFINE_TYPE(f32, float, float, IS_NUM, BY_FLOAT)
DEFINE_TYPE(f64, double, double, IS_NUM, BY_FLOAT)

/* A switch over the numeric types, X(ENUM, name) per case. */
#define NUMERIC_CASES(X)                                                                     \
  X(I8, i8) X(U8, u8) X(I16, i16) X(U16, u16) X(I32, i32) X(U32, u32) X(I64, i64)             \
  X(U64, u64) X(F32, f32) X(F64, f64)

/* ---- the same, 64 slots at a time ------------------------------------------ */

#ifdef VS_SSE2
#define LOAD128(p, off) _mm_loadu_si128((const __m128i *)(const void *)((p) + (off)))

/* Fills whole words of bits for n slots, VECS vectors of LANES slots each
 * per word; MATCH(off) gives a vector's lanes (all ones: the slot matches),
 * TOBITS one bit per lane. Returns the number of slots done. */
#define SIMD_WORDS(VECS, LANES, MATCH, TOBITS)                                               \
  do {                                                                                       \
    size_t w_, nw_ = n / 64;                                                                 \
    for (w_ = 0; w_ < nw_; w_++) {                                                           \
      __m128i m_[VECS], any_ = _mm_setzero_si128(), all_ = _mm_set1_epi8(-1);                \
      uint64_t word_ = 0;                                                                    \
      int v_;                                                                                \
      for (v_ = 0; v_ < (VECS); v_++) {                                                      \
        m_[v_] = MATCH((w_ * (VECS) + (size_t)v_) * 16);                                     \
        any_ = _mm_or_si128(any_, m_[v_]);                                                   \
        all_ = _mm_and_si128(all_, m_[v_]);                                                  \
      }                                                                                      \
      if (_mm_movemask_epi8(all_) == 0xFFFF)                                                 \
        word_ = ~(uint64_t)0;                                                                \
      else if (_mm_movemask_epi8(any_) != 0)                                                 \
        for (v_ = 0; v_ < (VECS); v_++)                                                      \
          word_ |= (uint64_t)(unsigned)TOBITS(m_[v_]) << (v_ * (LANES));                     \
      bits[w_] = word_;                                                                      \
    }                                                                                        \
    return nw_ * 64;                                                                         \
  } while (0)

#define BITS8(m) _mm_movemask_epi8(m)
#define BITS16(m) _mm_movemask_epi8(_mm_packs_epi16((m), _mm_setzero_si128()))
#define BITS32(m) _mm_movemask_ps(_mm_castsi128_ps(m))
#define BITS64(m) _mm_movemask_pd(_mm_castsi128_pd(m))

/* Lanes outside [lo, hi] (signed compares: unsigned values come biased). */
static __m128i out8(__m128i x, __m128i lo, __m128i hi) {
  return _mm_or_si128(_mm_cmpgt_epi8(lo, x), _mm_cmpgt_epi8(x, hi));
}
static __m128i out16(__m128i x, __m128i lo, __m128i hi) {
  return _mm_or_si128(_mm_cmpgt_epi16(lo, x), _mm_cmpgt_epi16(x, hi));
}
static __m128i out32(__m128i x, __m128i lo, __m128i hi) {
  return _mm_or_si128(_mm_cmpgt_epi32(lo, x), _mm_cmpgt_epi32(x, hi));
}
/* Float lanes inside [lo, hi], or (negate) outside it; NaN is neither. */
static __m128i match_ps(__m128 x, __m128 lo, __m128 hi, int negate) {
  return _mm_castps_si128(negate ? _mm_or_ps(_mm_cmplt_ps(x, lo), _mm_cmpgt_ps(x, hi))
                                 : _mm_and_ps(_mm_cmpge_ps(x, lo), _mm_cmple_ps(x, hi)));
}
static __m128i match_pd(__m128d x, __m128d lo, __m128d hi, int negate) {
  return _mm_castpd_si128(negate ? _mm_or_pd(_mm_cmplt_pd(x, lo), _mm_cmpgt_pd(x, hi))
                                 : _mm_and_pd(_mm_cmpge_pd(x, lo), _mm_cmple_pd(x, hi)));
}
/* 64-bit lanes whose two halves are both equal. */
static __m128i eq64(__m128i a, __m128i b) {
  __m128i e = _mm_cmpeq_epi32(a, b);
  return _mm_and_si128(e, _mm_shuffle_epi32(e, 0xB1));
}

/* Value test of n slots packed at p (align == size), whole words only. */
static size_t simd_range(const vs_scan *s, const unsigned char *p, size_t n, uint64_t *bits) {
  const vs_cond *c = &s->c;
  /* integers: a lane matches when it is not outside, or (negate) when it is */
  const __m128i flip = c->negate ? _mm_setzero_si128() : _mm_set1_epi8(-1);
  /* one value (==, ~=): one compare per lane; a match is equal, or (negate) not */
  const __m128i eqflip = c->negate ? _mm_set1_epi8(-1) : _mm_setzero_si128();
  switch (s->type) {
  case VS_I8: case VS_U8: {
    const unsigned b = s->type == VS_U8 ? 0x80 : 0;
    const __m128i v = _mm_set1_epi8((char)c->lo.u8), bias = _mm_set1_epi8((char)b),
                  lo = _mm_set1_epi8((char)(c->lo.u8 ^ b)), hi = _mm_set1_epi8((char)(c->hi.u8 ^ b));
#define EQ8(off) _mm_xor_si128(_mm_cmpeq_epi8(LOAD128(p, off), v), eqflip)
#define M8(off) _mm_xor_si128(out8(_mm_xor_si128(LOAD128(p, off), bias), lo, hi), flip)
    if (c->lo.u8 == c->hi.u8)
      SIMD_WORDS(4, 16, EQ8, BITS8);
    SIMD_WORDS(4, 16, M8, BITS8);
#undef EQ8
#undef M8
  }
  case VS_I16: case VS_U16: {
    const unsigned b = s->type == VS_U16 ? 0x8000 : 0;
    const __m128i v = _mm_set1_epi16((short)c->lo.u16), bias = _mm_set1_epi16((short)b),
                  lo = _mm_set1_epi16((short)(c->lo.u16 ^ b)), hi = _mm_set1_epi16((short)(c->hi.u16 ^ b));
#define EQ16(off) _mm_xor_si128(_mm_cmpeq_epi16(LOAD128(p, off), v), eqflip)
#define M16(off) _mm_xor_si128(out16(_mm_xor_si128(LOAD128(p, off), bias), lo, hi), flip)
    if (c->lo.u16 == c->hi.u16)
      SIMD_WORDS(8, 8, EQ16, BITS16);
    SIMD_WORDS(8, 8, M16, BITS16);
#undef EQ16
#undef M16
  }
  case VS_I32: case VS_U32: {
    const uint32_t b = s->type == VS_U32 ? 0x80000000u : 0;
    const __m128i v = _mm_set1_epi32((int)c->lo.u32), bias = _mm_set1_epi32((int)b),
                  lo = _mm_set1_epi32((int)(c->lo.u32 ^ b)), hi = _mm_set1_epi32((int)(c->hi.u32 ^ b));
#define EQ32(off) _mm_xor_si128(_mm_cmpeq_epi32(LOAD128(p, off), v), eqflip)
#define M32(off) _mm_xor_si128(out32(_mm_xor_si128(LOAD128(p, off), bias), lo, hi), flip)
    if (c->lo.u32 == c->hi.u32)
      SIMD_WORDS(16, 4, EQ32, BITS32);
    SIMD_WORDS(16, 4, M32, BITS32);
#undef EQ32
#undef M32
  }
  case VS_F32: {
    const __m128 lo = _mm_set1_ps(c->lo.f32), hi = _mm_set1_ps(c->hi.f32);
#define MF32(off) match_ps(_mm_castsi128_ps(LOAD128(p, off)), lo, hi, c->negate)
    SIMD_WORDS(16, 4, MF32, BITS32);
#undef MF32
  }
  case VS_F64: {
    const __m128d lo = _mm_set1_pd(c->lo.f64), hi = _mm_set1_pd(c->hi.f64);
#define MF64(off) match_pd(_mm_castsi128_pd(LOAD128(p, off)), lo, hi, c->negate)
    SIMD_WORDS(32, 2, MF64, BITS64);
#undef MF64
  }
  default:
    return 0; /* 64-bit integers: no SSE2 compare */
  }
}

/* Bitwise equality (or, changed, inequality) of n slots packed at p and q. */
static size_t simd_same(const vs_scan *s, const unsigned char *p, const unsigned char *q, size_t n,
                        uint64_t *bits, int changed) {
  const __m128i flip = changed ? _mm_set1_epi8(-1) : _mm_setzero_si128();
#define E8(off) _mm_xor_si128(_mm_cmpeq_epi8(LOAD128(p, off), LOAD128(q, off)), flip)
#define E16(off) _mm_xor_si128(_mm_cmpeq_epi16(LOAD128(p, off), LOAD128(q, off)), flip)
#define E32(off) _mm_xor_si128(_mm_cmpeq_epi32(LOAD128(p, off), LOAD128(q, off)), flip)
#define E64(off) _mm_xor_si128(eq64(LOAD128(p, off), LOAD128(q, off)), flip)
  switch (s->size) {
  case 1: SIMD_WORDS(4, 16, E8, BITS8);
  case 2: SIMD_WORDS(8, 8, E16, BITS16);
  case 4: SIMD_WORDS(16, 4, E32, BITS32);
  case 8: SIMD_WORDS(32, 2, E64, BITS64);
  default: return 0;
  }
#undef E8
#undef E16
#undef E32
#undef E64
}
#endif

/* ---- a block's bitmap ---------------------------------------------------------- */

/* String slots equal to the value (or, NE, not equal): the pattern scanner
 * finds the equal ones. */
static void bytes_bits(const vs_scan *s, const vs_block *b, const unsigned char *d,
                       uint64_t *bits) {
  size_t offs[256], found, k, from = b->first;
  size_t end = b->first + (b->nslots - 1) * s->align + s->size;
  int ne = s->c.op == VS_NE;
  if (ne)
    set_all(bits, b->nslots);
  do {
    found = rm_scan(&s->pat, d, end, from, (size_t)b->base, s->align, 1, offs, 256, &from);
    for (k = 0; k < found; k++) {
      size_t slot = (offs[k] - b->first) / s->align;
      if (ne)
        clear_bit(bits, slot);
      else
        set_bit(bits, slot);
    }
  } while (found == 256);
}

/* The slots of block b whose value in d passes a value op. */
static void value_bits(const vs_scan *s, const vs_block *b, const unsigned char *d,
                       uint64_t *bits) {
  size_t k = 0;
  memset(bits, 0, words(b->nslots) * sizeof *bits);
  if (s->c.op == VS_UNKNOWN) {
    set_all(bits, b->nslots);
    return;
  }
  if (s->type == VS_BYTES) {
    bytes_bits(s, b, d, bits);
    return;
  }
#ifdef VS_SSE2
  if (s->align == s->size && !s->c.empty)
    k = simd_range(s, d + b->first, b->nslots, bits);
#endif
  switch (s->type) {
#define RANGE(T, NAME)                                                                       \
  case VS_##T: range_##NAME(d, b->first, s->align, k, b->nslots, &s->c, bits); break;
    NUMERIC_CASES(RANGE)
#undef RANGE
  default: break;
  }
}

/* The slots of block b whose new value (nd) passes the pass's test against
 * the kept one (od). */
static void pair_bits(const vs_scan *s, const vs_block *b, const unsigned char *nd,
                      const unsigned char *od, uint64_t *bits) {
  size_t k = 0;
  int changed = s->c.op == VS_CHANGED;
  switch (s->c.op) {
  case VS_CHANGED: case VS_UNCHANGED:
    memset(bits, 0, words(b->nslots) * sizeof *bits);
#ifdef VS_SSE2
    if (s->align == s->size)
      k = simd_same(s, nd + b->first, od + b->first, b->nslots, bits, changed);
#endif
    for (; k < b->nslots; k++) {
      size_t off = b->first + k * s->align;
      if ((memcmp(nd + off, od + off, s->size) != 0) == changed)
        set_bit(bits, k);
    }
    return;
  case VS_INCREASED: case VS_DECREASED: case VS_INCREASED_BY: case VS_DECREASED_BY:
    memset(bits, 0, words(b->nslots) * sizeof *bits);
    switch (s->type) {
#define PAIR(T, NAME)                                                                        \
  case VS_##T: pair_##NAME(nd, od, b->first, s->align, b->nslots, &s->c, bits); break;
      NUMERIC_CASES(PAIR)
#undef PAIR
    default: break;
    }
    return;
  default:
    value_bits(s, b, nd, bits);
  }
}

/* One candidate's new value (np) against its kept one (op). */
static int test_one(const vs_scan *s, const unsigned char *np, const unsigned char *op) {
  switch (s->c.op) {
  case VS_UNKNOWN: return 1;
  case VS_CHANGED: return memcmp(np, op, s->size) != 0;
  case VS_UNCHANGED: return memcmp(np, op, s->size) == 0;
  default: break;
  }
  switch (s->type) {
#define TEST(T, NAME) \
  case VS_##T: return test_##NAME(np, op, &s->c);
    NUMERIC_CASES(TEST)
#undef TEST
  default: return (memcmp(np, s->q, s->size) == 0) != (s->c.op == VS_NE);
  }
}

/* ---- preparing a test ------------------------------------------------------------ */

/* The interval an op and its values (a, b) give within [min, max]. */
static int interval_i(vs_op op, int64_t a, int64_t b, int64_t min, int64_t max, int64_t *lo,
                      int64_t *hi) {
  *lo = min;
  *hi = max;
  switch (op) {
  case VS_LT: if (a <= min) return 0; *hi = a - 1; break;
  case VS_LE: *hi = a; break;
  case VS_GT: if (a >= max) return 0; *lo = a + 1; break;
  case VS_GE: *lo = a; break;
  case VS_BETWEEN: *lo = a < b ? a : b; *hi = a < b ? b : a; break;
  default: *lo = *hi = a; break;
  }
  if (*lo < min) *lo = min;
  if (*hi > max) *hi = max;
  return *lo <= *hi;
}

/* The same for u64, unsigned. */
static int interval_u(vs_op op, uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi) {
  *lo = 0;
  *hi = UINT64_MAX;
  switch (op) {
  case VS_LT: if (a == 0) return 0; *hi = a - 1; break;
  case VS_LE: *hi = a; break;
  case VS_GT: if (a == UINT64_MAX) return 0; *lo = a + 1; break;
  case VS_GE: *lo = a; break;
  case VS_BETWEEN: *lo = a < b ? a : b; *hi = a < b ? b : a; break;
  default: *lo = *hi = a; break;
  }
  return 1;
}

/* The next value after x (not NaN) towards +inf (up) or -inf, stepping
 * the bits: next_double and next_float. */
#define DEFINE_NEXT(NAME, T, BITS, INF)                                                      \
  static T NAME(T x, int up) {                                                               \
    BITS bits;                                                                               \
    if (x == 0) {                                                                            \
      bits = 1;                                                                              \
      memcpy(&x, &bits, sizeof x);                                                           \
      return up ? x : -x;                                                                    \
    }                                                                                        \
    memcpy(&bits, &x, sizeof bits);                                                          \
    if ((x > 0) == (up != 0)) {                                                              \
      if (x == (INF) || x == -(INF))                                                         \
        return x;                                                                            \
      bits++;                                                                                \
    } else {                                                                                 \
      bits--;                                                                                \
    }                                                                                        \
    memcpy(&x, &bits, sizeof x);                                                             \
    return x;                                                                                \
  }
DEFINE_NEXT(next_double, double, uint64_t, HUGE_VAL)
DEFINE_NEXT(next_float, float, uint32_t, HUGE_VALF)

/* The smallest float >= x (up) or the largest float <= x; x is not NaN. */
static float to_float(double x, int up) {
  float f;
  if (x > FLT_MAX)
    return up || x == HUGE_VAL ? HUGE_VALF : FLT_MAX;
  if (x < -FLT_MAX)
    return !up || x == -HUGE_VAL ? -HUGE_VALF : -FLT_MAX;
  f = (float)x;
  if (up ? (double)f < x : (double)f > x)
    f = next_float(f, up);
  return f;
}

/* The interval of a float value op, as doubles. */
static int interval_f(const vs_query *q, double *lo, double *hi) {
  double a = q->f1, b = q->f2;
  *lo = -HUGE_VAL;
  *hi = HUGE_VAL;
  switch (q->op) {
  case VS_LT: if (a == -HUGE_VAL) return 0; *hi = next_double(a, 0); break;
  case VS_LE: *hi = a; break;
  case VS_GT: if (a == HUGE_VAL) return 0; *lo = next_double(a, 1); break;
  case VS_GE: *lo = a; break;
  case VS_BETWEEN: *lo = a < b ? a : b; *hi = a < b ? b : a; break;
  default: *lo = a - q->tol; *hi = a + q->tol; break;
  }
  return *lo <= *hi;
}

/* An integer of the type, from its two's complement bits. */
static void set_num(vs_num *n, vs_type t, uint64_t v) {
  switch (t) {
  case VS_I8: n->i8 = (int8_t)v; break;
  case VS_U8: n->u8 = (uint8_t)v; break;
  case VS_I16: n->i16 = (int16_t)v; break;
  case VS_U16: n->u16 = (uint16_t)v; break;
  case VS_I32: n->i32 = (int32_t)v; break;
  case VS_U32: n->u32 = (uint32_t)v; break;
  case VS_I64: n->i64 = (int64_t)v; break;
  default: n->u64 = v; break;
  }
}

static const int64_t int_min[] = {INT8_MIN, 0, INT16_MIN, 0, INT32_MIN, 0, INT64_MIN};
static const int64_t int_max[] = {INT8_MAX, UINT8_MAX, INT16_MAX, UINT16_MAX, INT32_MAX,
                                  UINT32_MAX, INT64_MAX};

static void prepare(vs_scan *s, const vs_query *q) {
  vs_cond *c = &s->c;
  int dec = q->op == VS_DECREASED_BY, ok = 1;
  memset(c, 0, sizeof *c);
  c->op = q->op;
  c->negate = q->op == VS_NE;
  switch (s->type) {
  case VS_F32: case VS_F64: {
    double lo, hi, by = dec ? -q->f1 : q->f1;
    ok = interval_f(q, &lo, &hi);
    if (s->type == VS_F32) {
      c->lo.f32 = to_float(lo, 1);
      c->hi.f32 = to_float(hi, 0);
      ok = ok && c->lo.f32 <= c->hi.f32;
    } else {
      c->lo.f64 = lo;
      c->hi.f64 = hi;
    }
    c->by_lo = by - q->tol;
    c->by_hi = by + q->tol;
    break;
  }
  case VS_U64: {
    uint64_t lo, hi;
    ok = interval_u(q->op, (uint64_t)q->i1, (uint64_t)q->i2, &lo, &hi);
    c->lo.u64 = lo;
    c->hi.u64 = hi;
    c->by.u64 = dec ? 0 - (uint64_t)q->i1 : (uint64_t)q->i1;
    break;
  }
  case VS_BYTES:
    if (q->bytes != NULL)
      memcpy(s->q, q->bytes, s->size);
    break;
  default: {
    int64_t lo, hi;
    ok = interval_i(q->op, q->i1, q->i2, int_min[s->type], int_max[s->type], &lo, &hi);
    set_num(&c->lo, s->type, (uint64_t)lo);
    set_num(&c->hi, s->type, (uint64_t)hi);
    set_num(&c->by, s->type, dec ? 0 - (uint64_t)q->i1 : (uint64_t)q->i1);
    break;
  }
  }
  c->empty = !ok;
}

/* ---- reading ------------------------------------------------------------------------ */

static void begin_block(vs_scan *s, uintptr_t base) {
  if (s->anybad) {
    memset(s->bad, 0, s->badwords * sizeof *s->bad);
    s->anybad = 0;
  }
  s->bad_base = base - base % s->page;
}

/* Reads [addr, addr + n), inside the block begun, into buf: 0 when it
 * could, 1 when some pages could not (they are marked bad), -1 when the
 * process has gone (*err: the read's error). */
static int read_range(vs_scan *s, const vs_reader *r, uintptr_t addr, unsigned char *buf, size_t n,
                      unsigned long *err) {
  uintptr_t a = addr, end = addr + n;
  unsigned long e;
  if (n == 0 || (e = r->read(r->ctx, addr, buf, n)) == 0)
    return 0;
  if (r->gone(r->ctx)) {
    *err = e;
    return -1;
  }
  while (a < end) { /* what can be read of it, page by page */
    uintptr_t stop = a - a % s->page + s->page;
    if (stop > end || stop < a)
      stop = end;
    if (r->read(r->ctx, a, buf + (a - addr), stop - a) != 0) {
      size_t pg = (a - s->bad_base) / s->page;
      s->bad[pg >> 6] |= (uint64_t)1 << (pg & 63);
      s->anybad = 1;
    }
    a = stop;
  }
  return 1;
}

/* Whether the value at addr touches a page that could not be read. */
static int slot_bad(const vs_scan *s, uintptr_t addr) {
  size_t pg = (addr - s->bad_base) / s->page, last = (addr + s->size - 1 - s->bad_base) / s->page;
  for (; pg <= last; pg++)
    if (s->bad[pg >> 6] >> (pg & 63) & 1)
      return 1;
  return 0;
}

static void drop_bad(const vs_scan *s, const vs_block *b, uint64_t *bits) {
  size_t k;
  for (k = next_bit(bits, 0, b->nslots); k < b->nslots; k = next_bit(bits, k + 1, b->nslots))
    if (slot_bad(s, b->base + b->first + k * s->align))
      clear_bit(bits, k);
}

/* ---- storing a block -------------------------------------------------------------- */

static int ensure_scratch(vs_scan *s, size_t n) {
  if (s->scratch_cap < n) {
    size_t want = BLOCK + s->size - 1;
    free(s->scratch);
    s->scratch_cap = 0;
    if ((s->scratch = (unsigned char *)malloc(want > n ? want : n)) == NULL)
      return 0;
    s->scratch_cap = want > n ? want : n;
  }
  return 1;
}

static void free_block(vs_block *b) {
  free(b->snap);
  free(b->bits);
  free(b->offs);
  free(b->vals);
  b->snap = b->vals = NULL;
  b->bits = NULL;
  b->offs = NULL;
}

/* Whether count candidates cost less as a bitmap and a copy of the block
 * than as offsets and values. */
static int dense_is_smaller(const vs_scan *s, const vs_block *b, size_t count) {
  size_t bitmap = count == b->nslots ? 0 : words(b->nslots) * sizeof(uint64_t);
  return (uint64_t)count * (sizeof(uint32_t) + s->size) >= (uint64_t)b->len + bitmap;
}

/* Makes b sparse: the count slots that s->tmp marks, their values from d. */
static int to_sparse(const vs_scan *s, vs_block *b, const unsigned char *d, size_t count) {
  size_t k, i = 0;
  uint32_t *offs = (uint32_t *)malloc(count * sizeof *offs);
  unsigned char *vals = (unsigned char *)malloc(count * s->size);
  if (offs == NULL || vals == NULL) {
    free(offs);
    free(vals);
    return 0;
  }
  for (k = next_bit(s->tmp, 0, b->nslots); k < b->nslots; k = next_bit(s->tmp, k + 1, b->nslots)) {
    size_t off = b->first + k * s->align;
    offs[i] = (uint32_t)off;
    memcpy(vals + i * s->size, d + off, s->size);
    i++;
  }
  b->offs = offs;
  b->vals = vals;
  b->cap = count;
  return 1;
}

/* The bitmap of a dense block: s->tmp, or none when every slot is set. */
static int set_bits(const vs_scan *s, vs_block *b, size_t count) {
  size_t n = words(b->nslots) * sizeof(uint64_t);
  if (count == b->nslots) {
    free(b->bits);
    b->bits = NULL;
    return 1;
  }
  if (b->bits == NULL && (b->bits = (uint64_t *)malloc(n)) == NULL)
    return 0;
  memcpy(b->bits, s->tmp, n);
  return 1;
}

static int append(vs_scan *s, const vs_block *b) {
  if (s->nblocks == s->blockcap) {
    size_t cap = s->blockcap ? 2 * s->blockcap : 64;
    vs_block *grown = (vs_block *)realloc(s->blocks, cap * sizeof *grown);
    if (grown == NULL)
      return 0;
    s->blocks = grown;
    s->blockcap = cap;
  }
  s->blocks[s->nblocks++] = *b;
  s->count += b->count;
  return 1;
}

/* slot k lies at first + k * align: it starts before span and ends by len */
static size_t slot_count(const vs_scan *s, size_t first, size_t span, size_t len) {
  size_t by_span, by_len;
  if (first >= span || first + s->size > len)
    return 0;
  by_span = (span - first - 1) / s->align + 1;
  by_len = (len - s->size - first) / s->align + 1;
  return by_span < by_len ? by_span : by_len;
}

/* ---- passes -------------------------------------------------------------------------- */

/* The first pass over [base, base + len), slots starting before base + span. */
static int first_block(vs_scan *s, const vs_reader *r, uintptr_t base, size_t span, size_t len,
                       unsigned long *err) {
  vs_block b;
  unsigned char *d;
  size_t count;
  int rc;
  memset(&b, 0, sizeof b);
  b.base = base;
  b.span = span;
  b.len = len;
  b.first = base % s->align ? s->align - base % s->align : 0;
  if ((b.nslots = slot_count(s, b.first, span, len)) == 0)
    return VS_MORE;
  begin_block(s, base);
  if (s->c.op == VS_UNKNOWN) { /* the snapshot is read where it is kept */
    if ((d = (unsigned char *)malloc(len)) == NULL)
      return VS_NOMEM;
  } else {
    if (!ensure_scratch(s, len))
      return VS_NOMEM;
    d = s->scratch;
  }
  if ((rc = read_range(s, r, base, d, len, err)) < 0) {
    if (d != s->scratch)
      free(d);
    return VS_GONE;
  }
  value_bits(s, &b, d, s->tmp);
  if (rc > 0)
    drop_bad(s, &b, s->tmp);
  count = count_bits(s->tmp, b.nslots);
  if (count > s->limit - s->count) {
    count = (size_t)(s->limit - s->count);
    keep_first(s->tmp, b.nslots, count);
  }
  b.count = count;
  if (count == 0) {
    rc = 1;
  } else if (dense_is_smaller(s, &b, count)) {
    if ((rc = set_bits(s, &b, count)) != 0) {
      b.snap = d; /* the block keeps the buffer; the next read gets a new one */
      if (d == s->scratch) {
        s->scratch = NULL;
        s->scratch_cap = 0;
      }
      d = NULL;
    }
  } else {
    rc = to_sparse(s, &b, d, count);
  }
  if (d != NULL && d != s->scratch)
    free(d);
  if (rc && (count == 0 || append(s, &b)))
    return VS_MORE;
  free_block(&b);
  return VS_NOMEM;
}

static int first_one(vs_scan *s, const vs_reader *r, unsigned long *err) {
  const vs_run *run;
  size_t span, len, left;
  int rc;
  if (s->run >= s->nruns || s->count >= s->limit) {
    s->active = 0;
    s->first_done = 1;
    return VS_MORE;
  }
  run = &s->runs[s->run];
  left = run->hi - s->at;
  span = left < BLOCK ? left : BLOCK;
  len = left < span + s->size - 1 ? left : span + s->size - 1;
  if ((rc = first_block(s, r, s->at, span, len, err)) != VS_MORE)
    return rc;
  s->done += span;
  s->at += span;
  if (s->at >= run->hi && ++s->run < s->nruns)
    s->at = s->runs[s->run].lo;
  return VS_MORE;
}

/* A later pass over a dense block: the new bytes replace the snapshot, or
 * the block becomes sparse. */
static int next_dense(vs_scan *s, const vs_reader *r, vs_block *b, unsigned long *err) {
  unsigned char *old = b->snap;
  size_t count;
  if (!ensure_scratch(s, b->len))
    return VS_NOMEM;
  if (read_range(s, r, b->base, s->scratch, b->len, err) < 0)
    return VS_GONE;
  pair_bits(s, b, s->scratch, old, s->tmp);
  if (b->bits != NULL) {
    size_t i;
    for (i = 0; i < words(b->nslots); i++)
      s->tmp[i] &= b->bits[i];
  }
  if (s->anybad)
    drop_bad(s, b, s->tmp);
  count = count_bits(s->tmp, b->nslots);
  if (count == 0) {
    free_block(b);
  } else if (dense_is_smaller(s, b, count)) {
    if (!set_bits(s, b, count))
      return VS_NOMEM;
    b->snap = s->scratch; /* the old snapshot is the next scratch */
    s->scratch = old;
    s->scratch_cap = b->len;
  } else {
    if (!to_sparse(s, b, s->scratch, count))
      return VS_NOMEM;
    free(old);
    free(b->bits);
    b->snap = NULL;
    b->bits = NULL;
  }
  s->count = s->count - b->count + count;
  b->count = count;
  return VS_MORE;
}

/* A later pass over a sparse block: reads round its candidates and keeps
 * those that pass, with their new values. */
static int next_sparse(vs_scan *s, const vs_reader *r, vs_block *b, unsigned long *err) {
  size_t i = 0, j, kept = 0, sz = s->size;
  if (!ensure_scratch(s, b->len))
    return VS_NOMEM;
  while (i < b->count) {
    size_t lo = b->offs[i], hi = lo + sz;
    for (j = i + 1; j < b->count && b->offs[j] <= hi + GAP; j++)
      hi = b->offs[j] + sz;
    if (read_range(s, r, b->base + lo, s->scratch + lo, hi - lo, err) < 0)
      return VS_GONE;
    for (; i < j; i++) {
      const unsigned char *np = s->scratch + b->offs[i];
      if ((!s->anybad || !slot_bad(s, b->base + b->offs[i])) &&
          test_one(s, np, b->vals + i * sz)) {
        b->offs[kept] = b->offs[i];
        memcpy(b->vals + kept * sz, np, sz);
        kept++;
      }
    }
  }
  s->count = s->count - b->count + kept;
  if (kept == 0) {
    free_block(b);
  } else if (kept <= b->count / 2) { /* give memory back (keeping it if that fails) */
    uint32_t *offs = (uint32_t *)realloc(b->offs, kept * sizeof *offs);
    unsigned char *vals = (unsigned char *)realloc(b->vals, kept * sz);
    if (offs != NULL && vals != NULL)
      b->cap = kept;
    if (offs != NULL)
      b->offs = offs;
    if (vals != NULL)
      b->vals = vals;
  }
  b->count = kept;
  return VS_MORE;
}

/* Marks the pages of [lo, hi) bad. */
static void mark_bad(vs_scan *s, uintptr_t lo, uintptr_t hi) {
  size_t pg = (lo - s->bad_base) / s->page, last = (hi - 1 - s->bad_base) / s->page;
  for (; pg <= last; pg++)
    s->bad[pg >> 6] |= (uint64_t)1 << (pg & 63);
  s->anybad = 1;
}

/* Marks the pages of block b that no run covers as bad: they have gone, or
 * lost their protection, since the last pass. 0 if none is covered. */
static int clip(vs_scan *s, const vs_block *b) {
  uintptr_t a = b->base, end = b->base + b->len;
  size_t i;
  int covered = 0;
  while (s->run < s->nruns && s->runs[s->run].hi <= a)
    s->run++;
  for (i = s->run; a < end; i++) {
    if (i >= s->nruns || s->runs[i].lo >= end) {
      mark_bad(s, a, end);
      break;
    }
    if (s->runs[i].lo > a)
      mark_bad(s, a, s->runs[i].lo);
    covered = 1;
    a = s->runs[i].hi;
  }
  return covered;
}

static int next_one(vs_scan *s, const vs_reader *r, unsigned long *err) {
  vs_block *b;
  int rc = VS_MORE;
  if (s->r >= s->nblocks) {
    s->nblocks = s->w;
    s->active = 0;
    return VS_MORE;
  }
  b = &s->blocks[s->r];
  begin_block(s, b->base);
  if (!clip(s, b)) {
    s->count -= b->count;
    b->count = 0;
    free_block(b);
  } else {
    rc = b->snap != NULL ? next_dense(s, r, b, err) : next_sparse(s, r, b, err);
  }
  if (rc != VS_MORE)
    return rc;
  s->done += b->span;
  if (b->count > 0)
    s->blocks[s->w++] = *b;
  s->r++;
  return VS_MORE;
}

/* ---- the interface ----------------------------------------------------------------- */

vs_scan *vs_new(vs_type type, size_t size, size_t align, size_t page, uint64_t limit) {
  vs_scan *s;
  if (size == 0 || size > VS_MAX_BYTES || align == 0 || align > VS_MAX_ALIGN || page == 0 ||
      (type != VS_BYTES && size > 8))
    return NULL;
  if ((s = (vs_scan *)calloc(1, sizeof *s)) == NULL)
    return NULL;
  s->type = type;
  s->size = size;
  s->align = align;
  s->page = page;
  s->limit = limit;
  s->badwords = words((BLOCK + size) / page + 2);
  s->q = (unsigned char *)calloc(1, size);
  s->qmask = (unsigned char *)malloc(size);
  if (s->q == NULL || s->qmask == NULL) {
    vs_free(s);
    return NULL;
  }
  memset(s->qmask, 0xFF, size);
  s->pat.bytes = s->q;
  s->pat.mask = s->qmask;
  s->pat.len = size;
  return s;
}

/* The buffers of a pass: allocated when it starts, freed when it ends, so
 * that a scan between passes holds its candidates only. */
static int get_buffers(vs_scan *s) {
  if (s->tmp == NULL)
    s->tmp = (uint64_t *)malloc((words(BLOCK) + 1) * sizeof *s->tmp);
  if (s->bad == NULL) {
    s->bad = (uint64_t *)calloc(s->badwords, sizeof *s->bad);
    s->anybad = 0;
  }
  return s->tmp != NULL && s->bad != NULL;
}

static void drop_buffers(vs_scan *s) {
  free(s->scratch);
  free(s->tmp);
  free(s->bad);
  s->scratch = NULL;
  s->scratch_cap = 0;
  s->tmp = s->bad = NULL;
}

void vs_free(vs_scan *s) {
  size_t i;
  if (s == NULL)
    return;
  vs_stop(s);
  for (i = 0; i < s->nblocks; i++)
    free_block(&s->blocks[i]);
  free(s->blocks);
  free(s->runs);
  free(s->q);
  free(s->qmask);
  free(s);
}

void vs_clear_runs(vs_scan *s) {
  s->nruns = 0;
}

int vs_bounds(const vs_scan *s, uintptr_t *lo, uintptr_t *hi) {
  if (s->nblocks == 0)
    return 0;
  *lo = s->blocks[0].base;
  *hi = s->blocks[s->nblocks - 1].base + s->blocks[s->nblocks - 1].len;
  return 1;
}

int vs_add_run(vs_scan *s, uintptr_t lo, uintptr_t hi) {
  if (s->nruns == s->runcap) {
    size_t cap = s->runcap ? 2 * s->runcap : 16;
    vs_run *grown = (vs_run *)realloc(s->runs, cap * sizeof *grown);
    if (grown == NULL)
      return 0;
    s->runs = grown;
    s->runcap = cap;
  }
  s->runs[s->nruns].lo = lo;
  s->runs[s->nruns].hi = hi;
  s->nruns++;
  return 1;
}

int vs_begin(vs_scan *s, const vs_query *q) {
  size_t i;
  vs_stop(s);
  if (!s->first_done && q->op >= VS_CHANGED)
    return 0;
  prepare(s, q);
  if (s->type == VS_BYTES)
    rm_pattern_prepare(&s->pat);
  s->active = 1;
  s->done = s->total = 0;
  if (!s->first_done) {
    s->run = 0;
    s->at = s->nruns ? s->runs[0].lo : 0;
    for (i = 0; i < s->nruns; i++)
      s->total += s->runs[i].hi - s->runs[i].lo;
  } else {
    s->r = s->w = s->run = 0;
    for (i = 0; i < s->nblocks; i++)
      s->total += s->blocks[i].span;
  }
  return 1;
}

int vs_step(vs_scan *s, const vs_reader *r, size_t budget, unsigned long *err) {
  uint64_t until = s->done + budget;
  if (s->active && !get_buffers(s)) {
    vs_stop(s);
    return VS_NOMEM;
  }
  while (s->active) {
    int rc;
    if (s->done >= until)
      return VS_MORE;
    rc = s->first_done ? next_one(s, r, err) : first_one(s, r, err);
    if (rc != VS_MORE) {
      vs_stop(s);
      return rc;
    }
  }
  drop_buffers(s);
  return VS_DONE;
}

void vs_stop(vs_scan *s) {
  size_t i;
  drop_buffers(s);
  if (!s->active)
    return;
  s->active = 0;
  if (!s->first_done) {
    s->first_done = 1;
    return;
  }
  for (i = s->r; i < s->nblocks; i++) {
    s->count -= s->blocks[i].count;
    free_block(&s->blocks[i]);
  }
  s->nblocks = s->w;
}

int vs_active(const vs_scan *s) {
  return s->active;
}

uint64_t vs_count(const vs_scan *s) {
  return s->count;
}

uint64_t vs_memory(const vs_scan *s) {
  uint64_t n = 0;
  size_t i;
  for (i = 0; i < s->nblocks; i++) {
    const vs_block *b = &s->blocks[i];
    if (b->snap != NULL)
      n += b->len + (b->bits != NULL ? words(b->nslots) * sizeof(uint64_t) : 0);
    else
      n += (uint64_t)b->cap * (sizeof(uint32_t) + s->size);
  }
  return n;
}

uint64_t vs_done(const vs_scan *s) {
  return s->done;
}

uint64_t vs_total(const vs_scan *s) {
  return s->total;
}

size_t vs_items(const vs_scan *s, uint64_t *pos, uintptr_t *addrs, const unsigned char **vals,
                size_t max) {
  size_t bi = (size_t)(*pos >> 32), k = (size_t)(*pos & 0xFFFFFFFFu), n = 0;
  while (n < max && bi < s->nblocks) {
    const vs_block *b = &s->blocks[bi];
    size_t end = b->snap != NULL ? b->nslots : b->count;
    for (; n < max; k++) {
      size_t off;
      if (b->snap != NULL && b->bits != NULL)
        k = next_bit(b->bits, k, b->nslots);
      if (k >= end)
        break;
      off = b->snap != NULL ? b->first + k * s->align : b->offs[k];
      addrs[n] = b->base + off;
      if (vals != NULL)
        vals[n] = b->snap != NULL ? b->snap + off : b->vals + k * s->size;
      n++;
    }
    if (k >= end) {
      bi++;
      k = 0;
    }
  }
  *pos = (uint64_t)bi << 32 | k;
  return n;
}
