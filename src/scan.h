/*
 * The pattern scanner's inner loop: plain C, no Lua, no OS.
 */
#ifndef RMEM_SCAN_H
#define RMEM_SCAN_H

#include <stddef.h>

/* A pattern: len bytes, each compared under its mask (0xFF: the whole byte,
 * 0xF0 / 0x0F: one nibble, 0x00: anything); bytes are pre-masked. */
typedef struct rm_pattern {
  const unsigned char *bytes, *mask;
  size_t len;
  size_t anchor;  /* a fully known byte to look for first, or len if none */
  size_t anchor2; /* another, compared with it 16 positions at a time, or len */
} rm_pattern;

/* Fills p->anchor and p->anchor2: the fully known bytes least likely to be
 * common. */
void rm_pattern_prepare(rm_pattern *p);

/* Finds matches of p that start at offsets >= from and lie wholly inside
 * data[0..n), in ascending order, writing at most max offsets to out.
 * Overlapping matches are all reported unless overlapping is 0; only
 * offsets o with (base + o) % align == 0 count (align >= 1). Returns the
 * number written; *resume is where a further call would go on (n when
 * the data is exhausted). */
size_t rm_scan(const rm_pattern *p, const unsigned char *data, size_t n, size_t from,
               size_t base, size_t align, int overlapping, size_t *out, size_t max,
               size_t *resume);

#endif
