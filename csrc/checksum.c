/* Internet checksum core for ustack: see checksum.h for the conventions. */
#include "checksum.h"

#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define US_LITTLE_ENDIAN 1
#else
#define US_LITTLE_ENDIAN 0
#endif

static inline uint16_t fold64(uint64_t sum)
{
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffu) + (sum >> 16);
    sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)sum;
}

static inline uint16_t swap16(uint16_t v)
{
    return (uint16_t)((v << 8) | (v >> 8));
}

/* Sum in host byte order (RFC 1071 2(B): the sum is byte-order independent
 * up to a final swap). 32-bit words go into a 64-bit accumulator, which
 * cannot overflow below 16 GiB, so there is no carry handling in the loop
 * and the compiler is free to vectorise it. memcpy makes any alignment safe. */
static uint64_t sum_native(const uint8_t *buf, size_t len)
{
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint32_t w0, w1, w2, w3;

    while (len >= 16) {
        memcpy(&w0, buf, 4);
        memcpy(&w1, buf + 4, 4);
        memcpy(&w2, buf + 8, 4);
        memcpy(&w3, buf + 12, 4);
        a0 += w0;
        a1 += w1;
        a2 += w2;
        a3 += w3;
        buf += 16;
        len -= 16;
    }
    while (len >= 4) {
        memcpy(&w0, buf, 4);
        a0 += w0;
        buf += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t h;
        memcpy(&h, buf, 2);
        a1 += h;
        buf += 2;
        len -= 2;
    }
    if (len) {
        /* The odd byte is the high-order byte of a zero-padded word on the
         * wire; in host order that is where a one-byte load lands. */
#if US_LITTLE_ENDIAN
        a2 += buf[0];
#else
        a2 += (uint64_t)buf[0] << 8;
#endif
    }
    return a0 + a1 + a2 + a3;
}

static inline uint16_t to_wire(uint16_t host_folded)
{
#if US_LITTLE_ENDIAN
    return swap16(host_folded);
#else
    return host_folded;
#endif
}

uint16_t us_ones_sum(const uint8_t *buf, size_t len, uint16_t initial)
{
    uint16_t folded = to_wire(fold64(sum_native(buf, len)));
    return fold64((uint64_t)folded + initial);
}

uint16_t us_checksum(const uint8_t *buf, size_t len)
{
    return (uint16_t)~us_ones_sum(buf, len, 0);
}

uint16_t us_pseudo_sum_v4(uint32_t src, uint32_t dst, uint8_t proto, uint16_t l4_len)
{
    uint64_t sum = (src >> 16) + (src & 0xffffu) + (dst >> 16) + (dst & 0xffffu)
                   + proto + l4_len;
    return fold64(sum);
}

uint16_t us_l4_checksum_v4(uint32_t src, uint32_t dst, uint8_t proto,
                           const uint8_t *seg, size_t len)
{
    uint16_t pseudo = us_pseudo_sum_v4(src, dst, proto, (uint16_t)len);
    return (uint16_t)~us_ones_sum(seg, len, pseudo);
}

uint16_t us_update16(uint16_t checksum, uint16_t old_word, uint16_t new_word)
{
    uint64_t sum = (uint16_t)~checksum;
    sum += (uint16_t)~old_word;
    sum += new_word;
    return (uint16_t)~fold64(sum);
}

uint16_t us_update32(uint16_t checksum, uint32_t old_value, uint32_t new_value)
{
    uint64_t sum = (uint16_t)~checksum;
    sum += (uint16_t)~(old_value >> 16);
    sum += (uint16_t)~(old_value & 0xffffu);
    sum += new_value >> 16;
    sum += new_value & 0xffffu;
    return (uint16_t)~fold64(sum);
}
