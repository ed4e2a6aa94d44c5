/*
 * The pattern scanner's inner loop (scan.h): memchr for a rare fully known
 * byte of the pattern, then a masked compare around it.
 */
#include <string.h>

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

void rm_pattern_prepare(rm_pattern *p) {
  size_t i;
  int best = 4;
  p->anchor = p->len;
  for (i = 0; i < p->len; i++)
    if (p->mask[i] == 0xFF && commonness(p->bytes[i]) < best) {
      best = commonness(p->bytes[i]);
      p->anchor = i;
    }
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
      const unsigned char *hit = (const unsigned char *)memchr(
          data + pos + p->anchor, p->bytes[p->anchor], n - p->len + 1 - pos);
      if (hit == NULL) {
        pos = n; /* no anchor left: the data is exhausted */
        break;
      }
      start = (size_t)(hit - data) - p->anchor;
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
