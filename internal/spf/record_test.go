package spf

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// term is a Term in the tables: CIDR lengths absent unless given.
func term(raw string, q byte, name, value string, mod bool, cidr ...int) Term {
	t := Term{Raw: raw, Qualifier: q, Name: name, Value: value, IsModifier: mod, CIDR4: -1, CIDR6: -1}
	if len(cidr) > 0 {
		t.CIDR4 = cidr[0]
	}
	if len(cidr) > 1 {
		t.CIDR6 = cidr[1]
	}
	return t
}

var validSPF = []struct {
	name  string
	txt   string
	terms []Term
}{
	{"empty", "v=spf1", []Term{}},
	{"version any case, trailing spaces", "V=SpF1   ", []Term{}},
	{"qualifiers", "v=spf1 +all -all ~all ?all ALL", []Term{
		term("+all", '+', "all", "", false), term("-all", '-', "all", "", false), term("~all", '~', "all", "", false),
		term("?all", '?', "all", "", false), term("ALL", 0, "all", "", false),
	}},
	{"ip4 and ip6", "v=spf1 ip4:192.0.2.1 ip4:192.0.2.0/24 ip4:0.0.0.0/0 ip6:2001:db8::/32 ip6:::ffff:192.0.2.1 IP6:::1/128", []Term{
		term("ip4:192.0.2.1", 0, "ip4", "192.0.2.1", false), term("ip4:192.0.2.0/24", 0, "ip4", "192.0.2.0", false, 24),
		term("ip4:0.0.0.0/0", 0, "ip4", "0.0.0.0", false, 0), term("ip6:2001:db8::/32", 0, "ip6", "2001:db8::", false, -1, 32),
		term("ip6:::ffff:192.0.2.1", 0, "ip6", "::ffff:192.0.2.1", false), term("IP6:::1/128", 0, "ip6", "::1", false, -1, 128),
	}},
	{"a and mx with CIDR lengths", "v=spf1 a a/24 a//64 a/24//64 mx:example.com/0 -mx:example.com//0", []Term{
		term("a", 0, "a", "", false), term("a/24", 0, "a", "", false, 24), term("a//64", 0, "a", "", false, -1, 64),
		term("a/24//64", 0, "a", "", false, 24, 64), term("mx:example.com/0", 0, "mx", "example.com", false, 0),
		term("-mx:example.com//0", '-', "mx", "example.com", false, -1, 0),
	}},
	{"a slash inside a domain-spec", "v=spf1 a:foo:bar/baz.example.com mx:foo:bar/baz.example.com/24", []Term{
		term("a:foo:bar/baz.example.com", 0, "a", "foo:bar/baz.example.com", false),
		term("mx:foo:bar/baz.example.com/24", 0, "mx", "foo:bar/baz.example.com", false, 24),
	}},
	{"domain-specs", "v=spf1 include:_spf.example.com exists:%{ir}.%{v}._spf.%{d2} ptr ptr:example.com. a:%{d} a:.museum a:1-2.3-4", []Term{
		term("include:_spf.example.com", 0, "include", "_spf.example.com", false),
		term("exists:%{ir}.%{v}._spf.%{d2}", 0, "exists", "%{ir}.%{v}._spf.%{d2}", false),
		term("ptr", 0, "ptr", "", false), term("ptr:example.com.", 0, "ptr", "example.com.", false),
		term("a:%{d}", 0, "a", "%{d}", false), term("a:.museum", 0, "a", ".museum", false),
		term("a:1-2.3-4", 0, "a", "1-2.3-4", false),
	}},
	{"macros", "v=spf1 a:%{l1r-}.%{o}.%{s}.%{h}.%{p}.%{i}.%{D2R+-.,/_=}.%%.%_.%-.%{d} -all", []Term{
		term("a:%{l1r-}.%{o}.%{s}.%{h}.%{p}.%{i}.%{D2R+-.,/_=}.%%.%_.%-.%{d}", 0, "a", "%{l1r-}.%{o}.%{s}.%{h}.%{p}.%{i}.%{D2R+-.,/_=}.%%.%_.%-.%{d}", false),
		term("-all", '-', "all", "", false),
	}},
	{"modifiers", "v=spf1 redirect=_spf.example.com exp=explain.%{d} moo.cow-far_out=man:dog/cat x=%{c}%{r}%{t} y=", []Term{
		term("redirect=_spf.example.com", 0, "redirect", "_spf.example.com", true),
		term("exp=explain.%{d}", 0, "exp", "explain.%{d}", true),
		term("moo.cow-far_out=man:dog/cat", 0, "moo.cow-far_out", "man:dog/cat", true),
		term("x=%{c}%{r}%{t}", 0, "x", "%{c}%{r}%{t}", true),
		term("y=", 0, "y", "", true),
	}},
	{"modifier names are case-insensitive", "v=spf1 REDIRECT=a.example Exp=b.example", []Term{
		term("REDIRECT=a.example", 0, "redirect", "a.example", true), term("Exp=b.example", 0, "exp", "b.example", true),
	}},
}

var invalidSPF = []struct {
	name string
	txt  string
	err  string
}{
	{"no version", "spf1 -all", `not an SPF record: it must be "v=spf1" alone or followed by a space (RFC 7208 §4.5)`},
	{"other version", "v=spf10 -all", `not an SPF record: it must be "v=spf1" alone or followed by a space (RFC 7208 §4.5)`},
	{"unknown mechanism after the match", "v=spf1 ip4:1.2.3.4 -all moo", `term "moo": unknown mechanism "moo"`},
	{"redirect as a mechanism", "v=spf1 ip4:1.2.3.4 redirect:t2.example.com", `term "redirect:t2.example.com": unknown mechanism "redirect"`},
	{"qualified modifier", "v=spf1 -redirect=a.example", `term "-redirect=a.example": a modifier takes no qualifier`},
	{"lone qualifier", "v=spf1 + -all", `term "+": no mechanism after the qualifier`},
	{"modifier name with a slash", "v=spf1 moo.cow/far_out=man:dog/cat", `term "moo.cow/far_out=man:dog/cat": unknown mechanism "moo.cow"`},
	{"all with a dot", "v=spf1 -all.", `term "-all.": unknown mechanism "all."`},
	{"all with an argument", "v=spf1 -all:foobar", `term "-all:foobar": all takes no argument`},
	{"all with a CIDR", "v=spf1 -all/8", `term "-all/8": all takes no argument`},
	{"ptr with a CIDR", "v=spf1 ptr/0 -all", `term "ptr/0": ptr takes no CIDR length`},
	{"bare include", "v=spf1 include", `term "include": include needs ":" and a domain-spec`},
	{"empty include", "v=spf1 include:", `term "include:": empty domain-spec`},
	{"bare ip6", "v=spf1 -all ip6", `term "ip6": ip6 needs ":" and an address`},
	{"ip4 leading zero", "v=spf1 ip4:01.2.3.4", `term "ip4:01.2.3.4": "01.2.3.4" is not an IPv4 address (dotted quad, no leading zeros)`},
	{"ip4 with an IPv6", "v=spf1 ip4:::1", `term "ip4:::1": "::1" is not an IPv4 address (dotted quad, no leading zeros)`},
	{"ip6 with an IPv4", "v=spf1 ip6:1.2.3.4", `term "ip6:1.2.3.4": "1.2.3.4" is not an IPv6 address`},
	{"ip6 with a zone", "v=spf1 ip6:fe80::1%eth0", `term "ip6:fe80::1%eth0": "fe80::1%eth0" is not an IPv6 address`},
	{"CIDR leading zero", "v=spf1 ip4:1.2.3.4/032 -all", `term "ip4:1.2.3.4/032": CIDR length /032 with a leading zero`},
	{"CIDR4 out of range", "v=spf1 a/33", `term "a/33": CIDR length /33 out of range (0-32)`},
	{"CIDR6 out of range", "v=spf1 ip6:::1/129", `term "ip6:::1/129": CIDR length /129 out of range (0-128)`},
	{"CIDR6 leading zero", "v=spf1 mx:example.com//064", `term "mx:example.com//064": CIDR length /064 with a leading zero`},
	{"empty CIDR", "v=spf1 a/", `term "a/": empty CIDR length`},
	{"empty CIDR6", "v=spf1 a/24//", `term "a/24//": empty CIDR length`},
	{"CIDR not a number", "v=spf1 ip4:1.2.3.4/x", `term "ip4:1.2.3.4/x": CIDR length "x" is not a number`},
	{"single label", "v=spf1 a:museum", `term "a:museum": domain-spec "museum" does not end in a macro or in "." and a top label (RFC 7208 §7.1)`},
	{"single label, final dot", "v=spf1 a:museum.", `term "a:museum.": domain-spec "museum." does not end in a macro or in "." and a top label (RFC 7208 §7.1)`},
	{"no top label", "v=spf1 a:foo-bar -all", `term "a:foo-bar": domain-spec "foo-bar" does not end in a macro or in "." and a top label (RFC 7208 §7.1)`},
	{"numeric top label", "v=spf1 a:abc.123", `term "a:abc.123": domain-spec "abc.123": top label "123" is all digits`},
	{"an address as a domain", "v=spf1 a:111.222.33.44", `term "a:111.222.33.44": domain-spec "111.222.33.44": top label "44" is all digits`},
	{"hyphen top label", "v=spf1 mx:example.-com", `term "mx:example.-com": domain-spec "example.-com": top label "-com" begins or ends with a hyphen`},
	{"port", "v=spf1 a:example.com:8080", `term "a:example.com:8080": domain-spec "example.com:8080": top label "com:8080" has ':' (only letters, digits and hyphens)`},
	{"CIDR on include", "v=spf1 include:example.com/24", `term "include:example.com/24": domain-spec "example.com/24": top label "com/24" has '/' (only letters, digits and hyphens)`},
	{"literal after the last macro", "v=spf1 a:%{d}com", `term "a:%{d}com": domain-spec "%{d}com" does not end in a macro or in "." and a top label (RFC 7208 §7.1)`},
	{"NUL", "v=spf1 a:foo.example.com\x00", `term "a:foo.example.com\x00": control character 0x00 (terms are visible ASCII separated by spaces, RFC 7208 §12)`},
	{"CR", "v=spf1 a:ctrl.example.com\rptr", `term "a:ctrl.example.com\rptr": control character 0x0D (terms are visible ASCII separated by spaces, RFC 7208 §12)`},
	{"tab", "v=spf1\t-all", `not an SPF record: it must be "v=spf1" alone or followed by a space (RFC 7208 §4.5)`},
	{"tab between terms", "v=spf1 a\t-all", `term "a\t-all": control character 0x09 (terms are visible ASCII separated by spaces, RFC 7208 §12)`},
	{"DEL", "v=spf1 -all\x7f", `term "-all\x7f": control character 0x7F (terms are visible ASCII separated by spaces, RFC 7208 §12)`},
	{"non-ASCII", "v=spf1 a:\u00ef\u00bb\u00bfgarbage.example.net", `term "a:ï»¿garbage.example.net": non-ASCII byte 0xC3 (SPF records are 7-bit ASCII, RFC 7208 §3.1)`},
	{"two redirects", "v=spf1 redirect=a.example redirect=b.example", `term "redirect=b.example": a second redirect= modifier (RFC 7208 §6: at most one)`},
	{"two exps", "v=spf1 exp=a.example EXP=b.example", `term "EXP=b.example": a second exp= modifier (RFC 7208 §6: at most one)`},
	{"empty redirect", "v=spf1 ?all redirect=", `term "redirect=": redirect= needs a domain-spec`},
	{"redirect to a mechanism", "v=spf1 redirect=-all ?all", `term "redirect=-all": domain-spec "-all" does not end in a macro or in "." and a top label (RFC 7208 §7.1)`},
	{"empty exp", "v=spf1 exp= -all", `term "exp=": exp= needs a domain-spec`},
	{"exp to a mechanism", "v=spf1 exp=-all", `term "exp=-all": domain-spec "-all" does not end in a macro or in "." and a top label (RFC 7208 §7.1)`},
	{"exp-only letter in exp=", "v=spf1 -all exp=%{r}.example.com", `term "exp=%{r}.example.com": macro "%{r}": letter 'r' is allowed only in exp text (RFC 7208 §7.1)`},
	{"exp-only letter in a mechanism", "v=spf1 exists:%{c}.example.com", `term "exists:%{c}.example.com": macro "%{c}": letter 'c' is allowed only in exp text (RFC 7208 §7.1)`},
	{"unknown macro letter", "v=spf1 a:%{a}.example.com", `term "a:%{a}.example.com": macro "%{a}": unknown macro letter 'a'`},
	{"empty macro", "v=spf1 a:%{}.example.com", `term "a:%{}.example.com": macro "%{}": no macro letter`},
	{"zero parts", "v=spf1 a:%{d0}.example.com", `term "a:%{d0}.example.com": macro "%{d0}": the number of parts to keep must not be zero (RFC 7208 §7.3)`},
	{"bad delimiter", "v=spf1 a:%{d2r:}.example.com", `term "a:%{d2r:}.example.com": macro "%{d2r:}": ':' is not a delimiter (one of . - + , / _ =)`},
	{"unclosed macro", "v=spf1 a:%{d.example.com", `term "a:%{d.example.com": "%{d.example.com": macro without its closing "}"`},
	{"parenthesis macro", "v=spf1 -exists:%(ir).sbl.example.com ?all", `term "-exists:%(ir).sbl.example.com": "%(": "%" must be followed by "{", "%", "_" or "-" (RFC 7208 §7.1)`},
	{"trailing percent", "v=spf1 a:foo.example.com%", `term "a:foo.example.com%": "%" at the end (a literal % is written %%, RFC 7208 §7.1)`},
	{"bad macro in an unknown modifier", "v=spf1 -all foo=%abc", `term "foo=%abc": "%a": "%" must be followed by "{", "%", "_" or "-" (RFC 7208 §7.1)`},
}

func TestParse(t *testing.T) {
	for _, tt := range validSPF {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := Parse(tt.txt)
			require.NoError(t, err)
			require.Equal(t, tt.terms, rec.Terms)
			require.Equal(t, strings.Join(strings.Fields("v=spf1 "+tt.txt[6:]), " "), rec.String())
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tt := range invalidSPF {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := Parse(tt.txt)
			require.Nil(t, rec)
			require.EqualError(t, err, tt.err)
			var se *SyntaxError
			require.ErrorAs(t, err, &se)
			if se.Index >= 0 {
				var terms []string
				for f := range strings.SplitSeq(tt.txt[6:], " ") {
					if f != "" {
						terms = append(terms, f)
					}
				}
				require.Equal(t, terms[se.Index], se.Term)
			}
		})
	}
}

func TestIsSPF(t *testing.T) {
	for txt, want := range map[string]bool{
		"v=spf1": true, "V=SPF1 -all": true, "v=spf1 ": true,
		"v=spf10": false, "v=spf1\t-all": false, " v=spf1": false, "v=spf": false, "google-site-verification=x": false,
	} {
		require.Equal(t, want, IsSPF(txt), txt)
	}
}

func TestRecordHelpers(t *testing.T) {
	tests := []struct {
		txt      string
		lookups  int
		all      int
		insertAt int
		inserted string
	}{
		{"v=spf1", 0, -1, 0, "v=spf1 ip4:192.0.2.1"},
		{"v=spf1 mx include:_spf.example.com -all", 2, 2, 2, "v=spf1 mx include:_spf.example.com ip4:192.0.2.1 -all"},
		{"v=spf1 a mx ptr exists:%{i}.example.com include:x.example ip4:1.2.3.4 ip6:::1 ~all", 5, 7, 7,
			"v=spf1 a mx ptr exists:%{i}.example.com include:x.example ip4:1.2.3.4 ip6:::1 ip4:192.0.2.1 ~all"},
		{"v=spf1 ip4:1.2.3.4 redirect=_spf.example.com exp=e.example", 1, -1, 1, "v=spf1 ip4:1.2.3.4 ip4:192.0.2.1 redirect=_spf.example.com exp=e.example"},
		{"v=spf1 redirect=_spf.example.com -all a", 0, 1, 1, "v=spf1 redirect=_spf.example.com ip4:192.0.2.1 -all a"},
		{"v=spf1 a exp=e.example x=y", 1, -1, 1, "v=spf1 a ip4:192.0.2.1 exp=e.example x=y"},
	}
	for _, tt := range tests {
		t.Run(tt.txt, func(t *testing.T) {
			rec, err := Parse(tt.txt)
			require.NoError(t, err)
			before := rec.String()
			require.Equal(t, tt.lookups, rec.Lookups())
			require.Equal(t, tt.all, rec.AllIndex())
			require.Equal(t, tt.insertAt, rec.InsertIndex())
			ins, err := rec.Insert("ip4:192.0.2.1")
			require.NoError(t, err)
			require.Equal(t, tt.inserted, ins.String())
			require.Equal(t, before, rec.String(), "Insert changed the record")
		})
	}

	rec, err := Parse("v=spf1 include:a.example redirect=b.example exp=c.example")
	require.NoError(t, err)
	var costs []bool
	for _, tm := range rec.Terms {
		costs = append(costs, tm.CostsLookup())
	}
	require.Equal(t, []bool{true, true, false}, costs)
	r, ok := rec.Modifier("redirect")
	require.True(t, ok)
	require.Equal(t, "b.example", r.Value)
	_, ok = rec.Modifier("foo")
	require.False(t, ok)
	_, err = rec.Insert("exp=d.example")
	require.EqualError(t, err, `term "exp=d.example": a modifier, not a mechanism`)
	_, err = rec.Insert("ip4:192.0.2.1/33")
	require.EqualError(t, err, `term "ip4:192.0.2.1/33": CIDR length /33 out of range (0-32)`)
}

// suiteRecords are the TXT and SPF strings of the RFC 7208 suite's zone data.
func suiteRecords(tb testing.TB) []string {
	var out []string
	for _, s := range loadSuite(tb, "testdata/rfc7208-tests.yml") {
		for _, nodes := range s.ZoneData {
			for _, n := range nodes {
				if n.Kind == yaml.MappingNode && len(n.Content) == 2 && (n.Content[0].Value == "SPF" || n.Content[0].Value == "TXT") {
					out = append(out, strings.Join(scalars(n.Content[1]), ""))
				}
			}
		}
	}
	return out
}

// FuzzParse checks the parser's invariants: an error is a *SyntaxError naming a
// term of the input; an accepted record has only visible-ASCII terms, at most one
// redirect= and exp=, re-renders (String) to a record that parses to the same terms,
// takes a mechanism before its final all, and gives the library one term per
// evaluated term whatever its macros expand to.
func FuzzParse(f *testing.F) {
	for _, tt := range validSPF {
		f.Add(tt.txt)
	}
	for _, tt := range invalidSPF {
		f.Add(tt.txt)
	}
	for _, txt := range suiteRecords(f) {
		f.Add(txt)
	}
	f.Fuzz(func(t *testing.T, txt string) {
		// Values with the characters the library must not see in a name.
		v := &view{env: newMacroEnv(netip.MustParseAddr("2001:db8::1"), "he lo/%\x1fs", "a b/%@c d/%\x1fe"), ptrDone: true}
		require.Equal(t, txt, realName(libName(txt)))
		rec, err := Parse(txt)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("%q: error %v is not a *SyntaxError", txt, err)
			}
			if se.Index >= 0 && !strings.Contains(txt, se.Term) {
				t.Fatalf("%q: error names %q, not in the record", txt, se.Term)
			}
			return
		}
		if !IsSPF(txt) {
			t.Fatalf("%q accepted without v=spf1", txt)
		}
		mods := map[string]int{}
		evaluated := 0
		for _, tm := range rec.Terms {
			if tm.Raw == "" {
				t.Fatalf("%q: empty term", txt)
			}
			for i := 0; i < len(tm.Raw); i++ {
				if c := tm.Raw[i]; c < 0x21 || c > 0x7E {
					t.Fatalf("%q: term %q accepted with byte 0x%02X", txt, tm.Raw, c)
				}
			}
			if tm.IsModifier {
				mods[tm.Name]++
			}
			if !tm.IsModifier || tm.Name == "redirect" {
				evaluated++
			}
			if one, err := ParseTerm(tm.Raw); err != nil || !reflect.DeepEqual(one, tm) {
				t.Fatalf("%q: term %q parses alone to %+v, %v; in the record to %+v", txt, tm.Raw, one, err, tm)
			}
		}
		if mods["redirect"] > 1 || mods["exp"] > 1 {
			t.Fatalf("%q: accepted with %d redirect= and %d exp=", txt, mods["redirect"], mods["exp"])
		}
		again, err := Parse(rec.String())
		if err != nil {
			t.Fatalf("%q: String() %q does not parse: %v", txt, rec.String(), err)
		}
		if !reflect.DeepEqual(again.Terms, rec.Terms) {
			t.Fatalf("%q: String() %q parses to other terms:\n%+v\n%+v", txt, rec.String(), again.Terms, rec.Terms)
		}
		if n := rec.Lookups(); n < 0 || n > len(rec.Terms) {
			t.Fatalf("%q: %d lookups for %d terms", txt, n, len(rec.Terms))
		}
		ins, err := rec.Insert("ip4:192.0.2.1")
		if err != nil || len(ins.Terms) != len(rec.Terms)+1 {
			t.Fatalf("%q: Insert: %v", txt, err)
		}
		if i := ins.AllIndex(); i == 0 || i > 0 && ins.Terms[i-1].Raw != "ip4:192.0.2.1" {
			t.Fatalf("%q: inserted at %d, not before the final all: %q", txt, ins.InsertIndex(), ins.String())
		}
		lib := v.libraryRecord(t.Context(), rec, "do/m%ain.example")
		if fields := strings.Split(lib, " "); len(fields) != 1+evaluated || fields[0] != "v=spf1" {
			t.Fatalf("%q: the library reads %q", txt, lib)
		}
	})
}
