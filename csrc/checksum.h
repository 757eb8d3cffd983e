/* Internet checksum core for ustack (RFC 1071, RFC 1624).
 *
 * Convention: every 16-bit value in and out is the numeric value of the
 * field as it stands on the wire (big-endian), so Python can pack it with
 * struct format "!H" whatever the host byte order.
 */
#ifndef USTACK_CHECKSUM_H
#define USTACK_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* One's-complement sum of buf (odd length padded with a zero byte), added to
 * `initial` (a previous folded sum), folded to 16 bits, not complemented.
 * Chaining is only exact when every buffer but the last has even length. */
uint16_t us_ones_sum(const uint8_t *buf, size_t len, uint16_t initial);

/* The Internet checksum of buf: ~us_ones_sum(buf, len, 0). A header whose
 * checksum field is correct gives 0. */
uint16_t us_checksum(const uint8_t *buf, size_t len);

/* Folded sum of the IPv4 pseudo-header (RFC 9293 3.1, RFC 768):
 * src and dst as host integers (198.18.0.1 == 0xC6120001). */
uint16_t us_pseudo_sum_v4(uint32_t src, uint32_t dst, uint8_t proto, uint16_t l4_len);

/* Checksum of a TCP or UDP segment (header + payload) over IPv4, with its
 * checksum field either zeroed (to fill it in) or filled (gives 0 if valid). */
uint16_t us_l4_checksum_v4(uint32_t src, uint32_t dst, uint8_t proto,
                           const uint8_t *seg, size_t len);

/* RFC 1624 eqn. 3: the new checksum after a 16-bit field changes from
 * old_word to new_word: HC' = ~(~HC + ~m + m'). */
uint16_t us_update16(uint16_t checksum, uint16_t old_word, uint16_t new_word);

/* The same for a 32-bit field (an address, a sequence number). */
uint16_t us_update32(uint16_t checksum, uint32_t old_value, uint32_t new_value);

#endif
