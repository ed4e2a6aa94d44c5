/*
 * libFuzzer harness for the scanner's inner loop (src/scan.c), checked
 * against a byte-by-byte reference: every match, in order, none invented,
 * for any pattern, mask, alignment, overlap setting, limit and start.
 *
 * Input: [len][align][flags][limit][from] then len pattern bytes, len mask
 * bytes, then the data.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/scan.h"

static int reference_match(const unsigned char *b, const unsigned char *m, size_t len,
                           const unsigned char *at) {
  size_t i;
  for (i = 0; i < len; i++)
    if ((at[i] & m[i]) != b[i])
      return 0;
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  size_t len, align, limit, from, n, i, found, resume, want = 0, got_total = 0, pos;
  int overlapping;
  unsigned char bytes[64], mask[64];
  size_t out[512];
  const unsigned char *data;
  rm_pattern p;
  if (size < 5)
    return 0;
  len = (size_t)(in[0] % 32) + 1;
  align = (size_t)(in[1] % 8) + 1;
  overlapping = in[2] & 1;
  limit = (size_t)in[3] % 64 + 1;
  from = in[4];
  in += 5;
  size -= 5;
  if (size < 2 * len)
    return 0;
  for (i = 0; i < len; i++) {
    /* masks as the parser makes them: whole bytes, nibbles or nothing */
    static const unsigned char kinds[4] = {0xFF, 0xF0, 0x0F, 0x00};
    mask[i] = kinds[in[len + i] & 3];
    bytes[i] = in[i] & mask[i];
  }
  data = in + 2 * len;
  n = size - 2 * len;
  p.bytes = bytes;
  p.mask = mask;
  p.len = len;
  rm_pattern_prepare(&p);
  if (p.anchor > len || p.anchor2 > len || (p.anchor < len && mask[p.anchor] != 0xFF))
    abort();
  found = rm_scan(&p, data, n, from, 0, align, overlapping, out, limit, &resume);
  /* the reference: the same walk, one position at a time */
  pos = from;
  while (pos + len <= n && want < limit) {
    if (reference_match(bytes, mask, len, data + pos) && pos % align == 0) {
      if (want >= found || out[want] != pos)
        abort(); /* missed or misplaced */
      want++;
      pos += overlapping ? 1 : len;
    } else {
      pos++;
    }
  }
  got_total = found;
  if (want != got_total || resume > (n > 0 ? n : 0))
    abort(); /* invented matches, or a resume point past the data */
  return 0;
}
