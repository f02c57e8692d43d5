package config

import (
	"sort"
	"strconv"
	"strings"
)

// BurntSushi/toml keeps the position of every key but does not export it (v1.6), and
// keys of [[array]] tables share one entry there. So this file scans the source once more,
// after the decoder accepted it, to map every key path as Load names it
// ("dkim.keys[1].private_key", "smtp.allow_networks[2]") to where it was written. The scan
// understands just enough TOML to find keys: tables, arrays of tables, dotted and quoted
// keys, strings of all four kinds, arrays and inline tables, and comments.

type position struct{ line, col int }

type positions map[string]position

// find returns the position of key, or of its nearest ancestor in the file
// ("users[1].unit" falls back to "users[1]", the [[users]] header).
func (ps positions) find(key string) (position, bool) {
	for key != "" {
		if p, ok := ps[key]; ok {
			return p, true
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			return position{}, false
		}
		key = key[:i]
	}
	return position{}, false
}

// locate scans TOML source that the decoder already accepted.
func locate(src string) positions {
	s := &scanner{src: src, pos: positions{}, arrays: map[string]int{}}
	for i, c := range src {
		if c == '\n' {
			s.lineStarts = append(s.lineStarts, i+1)
		}
	}
	s.document()
	return s.pos
}

type scanner struct {
	src        string
	i          int
	lineStarts []int // offsets of the second and later lines
	pos        positions
	arrays     map[string]int // path of an array of tables → elements seen so far
}

func (s *scanner) at(off int) position {
	line := sort.SearchInts(s.lineStarts, off+1) // lines that start at or before off
	start := 0
	if line > 0 {
		start = s.lineStarts[line-1]
	}
	return position{line: line + 1, col: off - start + 1}
}

func (s *scanner) record(path string, off int) {
	if _, ok := s.pos[path]; !ok {
		s.pos[path] = s.at(off)
	}
}

func (s *scanner) peek() byte {
	if s.i < len(s.src) {
		return s.src[s.i]
	}
	return 0
}

func (s *scanner) hasPrefix(p string) bool { return strings.HasPrefix(s.src[s.i:], p) }

// skip passes spaces and tabs, and with newlines also line ends and comments.
func (s *scanner) skip(newlines bool) {
	for s.i < len(s.src) {
		switch s.src[s.i] {
		case ' ', '\t':
		case '\r', '\n':
			if !newlines {
				return
			}
		case '#':
			if !newlines {
				return
			}
			for s.i < len(s.src) && s.src[s.i] != '\n' {
				s.i++
			}
			continue
		default:
			return
		}
		s.i++
	}
}

func (s *scanner) document() {
	table := ""
	for {
		s.skip(true)
		if s.i >= len(s.src) {
			return
		}
		start := s.i
		if s.peek() == '[' {
			table = s.header(start)
		} else if !s.keyValue(table) {
			return // not TOML after all: keep what was found
		}
		if s.i == start {
			return
		}
	}
}

// header reads "[a.b]" or "[[a.b]]" and returns the table's path, with the index of every
// array of tables on the way ("dkim.keys[1]").
func (s *scanner) header(start int) string {
	array := s.hasPrefix("[[")
	if array {
		s.i += 2
	} else {
		s.i++
	}
	parts := s.key()
	path := ""
	for k, part := range parts {
		path = join(path, part)
		if array && k == len(parts)-1 {
			s.arrays[path]++
		}
		if n := s.arrays[path]; n > 0 {
			s.record(path, start) // the array itself: where its first element starts
			path += "[" + strconv.Itoa(n-1) + "]"
		}
		s.record(path, start)
	}
	for s.i < len(s.src) && s.src[s.i] != '\n' && s.src[s.i] != '#' {
		s.i++
	}
	return path
}

// keyValue reads "key = value" in table and records the key and what the value holds.
func (s *scanner) keyValue(table string) bool {
	start := s.i
	parts := s.key()
	if len(parts) == 0 {
		return false
	}
	path := table
	for _, part := range parts {
		path = join(path, part)
		s.record(path, start)
	}
	s.skip(false)
	if s.peek() != '=' {
		return false
	}
	s.i++
	s.skip(false)
	s.value(path)
	return true
}

// key reads a dotted key of bare, "basic" and 'literal' parts.
func (s *scanner) key() []string {
	var parts []string
	for {
		s.skip(false)
		switch c := s.peek(); {
		case c == '"' || c == '\'':
			s.i++
			begin := s.i
			for s.i < len(s.src) && s.src[s.i] != c && s.src[s.i] != '\n' {
				if c == '"' && s.src[s.i] == '\\' {
					s.i++
				}
				s.i++
			}
			parts = append(parts, s.src[begin:min(s.i, len(s.src))])
			s.i++
		case isBare(c):
			begin := s.i
			for s.i < len(s.src) && isBare(s.src[s.i]) {
				s.i++
			}
			parts = append(parts, s.src[begin:s.i])
		default:
			return parts
		}
		s.skip(false)
		if s.peek() != '.' {
			return parts
		}
		s.i++
	}
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// value passes one value, recording the elements of arrays and the keys of inline tables.
func (s *scanner) value(path string) {
	switch s.peek() {
	case '"', '\'':
		s.str()
	case '[':
		s.i++
		for n := 0; ; {
			s.skip(true)
			switch s.peek() {
			case 0:
				return
			case ']':
				s.i++
				return
			case ',':
				s.i++
			default:
				elem := path + "[" + strconv.Itoa(n) + "]"
				s.record(elem, s.i)
				before := s.i
				s.value(elem)
				if s.i == before {
					return
				}
				n++
			}
		}
	case '{':
		s.i++
		for {
			s.skip(false)
			switch s.peek() {
			case 0, '\n':
				return
			case '}':
				s.i++
				return
			case ',':
				s.i++
			default:
				if !s.keyValue(path) {
					return
				}
			}
		}
	default: // number, bool, date: up to whatever ends it
		for s.i < len(s.src) && !strings.ContainsRune(",]}#\r\n", rune(s.src[s.i])) {
			s.i++
		}
	}
}

// str passes a basic, literal or multi-line string.
func (s *scanner) str() {
	q := s.src[s.i : s.i+1]
	if s.hasPrefix(q + q + q) {
		s.i += 3
		end := strings.Index(s.src[s.i:], q+q+q)
		if end < 0 {
			s.i = len(s.src)
			return
		}
		s.i += end + 3
		// Up to two quotes may precede the closing three (TOML 1.0 §String).
		for k := 0; k < 2 && s.hasPrefix(q); k++ {
			s.i++
		}
		return
	}
	s.i++
	for s.i < len(s.src) && s.src[s.i:s.i+1] != q && s.src[s.i] != '\n' {
		if q == `"` && s.src[s.i] == '\\' {
			s.i++
		}
		s.i++
	}
	s.i++
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
