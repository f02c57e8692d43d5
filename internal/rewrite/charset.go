package rewrite

import (
	"io"
	"mime"
	"strings"
	"unicode/utf8"
)

// wordDecoder decodes RFC 2047 encoded-words in From and Sender. mime handles utf-8,
// us-ascii and iso-8859-1 itself; charsetReader adds the other common Western ones.
func wordDecoder() *mime.WordDecoder {
	return &mime.WordDecoder{CharsetReader: charsetReader}
}

// charsetReader converts the text of an encoded-word to UTF-8. An unknown charset is not an
// error: the relay only needs the display name for the rewritten From, and refusing the
// message (net/mail turns a charset error into a parse error) would be worse than showing
// U+FFFD for its non-ASCII bytes. The original header is forwarded unchanged anyway.
func charsetReader(charset string, input io.Reader) (io.Reader, error) {
	b, err := io.ReadAll(input)
	if err != nil {
		return nil, err
	}
	var s string
	switch charset { // mime passes it lower-cased
	case "utf8", "utf-8", "ascii", "us-ascii":
		s = strings.ToValidUTF8(string(b), "\uFFFD")
	case "latin1", "l1", "iso8859-1", "iso_8859-1", "iso-8859-1", "cp819", "ibm819":
		s = decodeTable(b, nil)
	case "windows-1252", "cp1252", "x-cp1252":
		s = decodeCP1252(b)
	case "iso-8859-15", "iso8859-15", "iso_8859-15", "latin9", "latin-9", "l9":
		s = decodeTable(b, latin9)
	default:
		if strings.HasPrefix(charset, "iso-2022") || charset == "utf-7" || charset == "hz-gb-2312" {
			// 7-bit charsets whose ASCII bytes are not ASCII text.
			s = "\uFFFD"
		} else {
			s = decodeUnknown(b)
		}
	}
	return strings.NewReader(s), nil
}

// cp1252 maps the bytes 0x80-0x9F of Windows-1252; the five it leaves undefined map to the
// C1 controls of the same value, as WHATWG's encoding standard does.
var cp1252 = map[byte]rune{
	0x80: '€', 0x82: '‚', 0x83: 'ƒ', 0x84: '„', 0x85: '…', 0x86: '†', 0x87: '‡', 0x88: 'ˆ',
	0x89: '‰', 0x8A: 'Š', 0x8B: '‹', 0x8C: 'Œ', 0x8E: 'Ž', 0x91: '‘', 0x92: '’', 0x93: '“',
	0x94: '”', 0x95: '•', 0x96: '–', 0x97: '—', 0x98: '˜', 0x99: '™', 0x9A: 'š', 0x9B: '›',
	0x9C: 'œ', 0x9E: 'ž', 0x9F: 'Ÿ',
}

// latin9 is where ISO-8859-15 differs from ISO-8859-1.
var latin9 = map[byte]rune{
	0xA4: '€', 0xA6: 'Š', 0xA8: 'š', 0xB4: 'Ž', 0xB8: 'ž', 0xBC: 'Œ', 0xBD: 'œ', 0xBE: 'Ÿ',
}

func decodeCP1252(b []byte) string { return decodeTable(b, cp1252) }

// decodeTable decodes a single-byte charset that is Latin-1 except for the bytes in diff.
func decodeTable(b []byte, diff map[byte]rune) string {
	var sb strings.Builder
	sb.Grow(len(b) + len(b)/4)
	for _, c := range b {
		if r, ok := diff[c]; ok {
			sb.WriteRune(r)
		} else {
			sb.WriteRune(rune(c))
		}
	}
	return sb.String()
}

// decodeUnknown keeps the ASCII of an unknown charset and writes one U+FFFD for each run of
// other bytes (in multi-byte charsets one character is several bytes).
func decodeUnknown(b []byte) string {
	var sb strings.Builder
	replaced := false
	for _, c := range b {
		if c < utf8.RuneSelf {
			sb.WriteByte(c)
			replaced = false
		} else if !replaced {
			sb.WriteRune(utf8.RuneError)
			replaced = true
		}
	}
	return sb.String()
}
