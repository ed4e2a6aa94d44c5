/*
 * The pattern scanner's inner loop (scan.h): two rare fully known bytes of
 * the pattern compared 16 positions at a time (SSE2), then a masked
 * compare of the whole pattern where both match.
 */

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define RM_SSE2 1
#endif

#include "scan.h"

/* How common a byte is in code and data: lower is rarer. Zero, 0xFF and the
 * usual x86 opcode and padding bytes make poor anchors. */
static int commonness(unsigned char b) {
  switch (b) {
  case 0x00: case 0xFF: return 3;
  case 0xCC: case 0x90: case 0x48: case 0x8B: case 0x89: case 0xE8: case 0x0F:
  case 0x24: case 0x4C: case 0x83: case 0x01: return 2;
  default: return 1;
  }
}

/* The rarest fully known byte other than skip, or len if there is none. */
static size_t rarest(const rm_pattern *p, size_t skip) {
  size_t i, at = p->len;
  int best = 4;
  for (i = 0; i < p->len; i++)
    if (i != skip && p->mask[i] == 0xFF && commonness(p->bytes[i]) < best) {
      best = commonness(p->bytes[i]);
      at = i;
    }
  return at;
}

void rm_pattern_prepare(rm_pattern *p) {
  p->anchor = rarest(p, p->len);
  p->anchor2 = p->anchor < p->len ? rarest(p, p->anchor) : p->len;
}

/* The first start in [pos, last] where both anchor bytes match, or last + 1.
 * Every byte read lies below last + len, the end of the data. */
static size_t next_candidate(const rm_pattern *p, const unsigned char *data, size_t pos,
                             size_t last) {
  size_t a1 = p->anchor, a2 = p->anchor2 < p->len ? p->anchor2 : p->anchor;
  unsigned char b1 = p->bytes[a1], b2 = p->bytes[a2];
#ifdef RM_SSE2
  const __m128i v1 = _mm_set1_epi8((char)b1), v2 = _mm_set1_epi8((char)b2);
  const unsigned char *d1 = data + a1, *d2 = data + a2;
#define RM_BOTH(at)                                                                   \
  _mm_and_si128(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(d1 + (at))), v1), \
                _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(d2 + (at))), v2))
  while (pos <= last && last - pos >= 31) { /* starts pos .. pos + 31 */
    __m128i lo = RM_BOTH(pos), hi = RM_BOTH(pos + 16);
    if (_mm_movemask_epi8(_mm_or_si128(lo, hi)) != 0)
      break; /* the scalar loop below finds which */
    pos += 32;
  }
#undef RM_BOTH
#endif
  for (; pos <= last; pos++)
    if (data[pos + a1] == b1 && data[pos + a2] == b2)
      return pos;
  return last + 1;
}

static int matches(const rm_pattern *p, const unsigned char *at) {
  size_t i;
  for (i = 0; i < p->len; i++)
    if ((at[i] & p->mask[i]) != p->bytes[i])
      return 0;
  return 1;
}

size_t rm_scan(const rm_pattern *p, const unsigned char *data, size_t n, size_t from,
               size_t base, size_t align, int overlapping, size_t *out, size_t max,
               size_t *resume) {
  size_t found = 0, pos = from;
  if (p->len == 0 || n < p->len) {
    *resume = n;
    return 0;
  }
  while (pos + p->len <= n && found < max) {
    size_t start;
    if (p->anchor < p->len) {
      start = next_candidate(p, data, pos, n - p->len);
      if (start > n - p->len) {
        pos = n; /* no candidate left: the data is exhausted */
        break;
      }
    } else {
      start = pos;
    }
    if (matches(p, data + start) && (base + start) % align == 0) {
      out[found++] = start;
      pos = overlapping ? start + 1 : start + p->len;
    } else {
      pos = start + 1;
    }
  }
  *resume = pos + p->len <= n ? pos : n;
  return found;
}
