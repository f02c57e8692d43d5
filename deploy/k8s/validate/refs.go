package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v3"
)

// The relay's shutdown grace (cmd/relay/serve.go): a pod must be given longer than this.
const relayGraceSeconds = 20

type object struct {
	file string
	line int
	m    map[string]any
}

func (o *object) kind() string { return str(o.m, "kind") }
func (o *object) name() string { return str(o.m, "metadata", "name") }
func (o *object) String() string {
	return fmt.Sprintf("%s:%d: %s/%s", o.file, o.line, o.kind(), o.name())
}

func readManifests(files []string) ([]*object, error) {
	var objs []*object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var n yaml.Node
			if err := dec.Decode(&n); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %v", f, err)
			}
			var m map[string]any
			if err := n.Decode(&m); err != nil {
				return nil, fmt.Errorf("%s:%d: %v", f, n.Line, err)
			}
			if m == nil {
				continue // an empty document
			}
			line := n.Line
			if len(n.Content) > 0 {
				line = n.Content[0].Line
			}
			objs = append(objs, &object{file: f, line: line, m: m})
		}
	}
	return objs, nil
}

// A workload is anything with a pod template (or a Pod itself).
type workload struct {
	obj    *object
	labels map[string]string
	spec   map[string]any
	claims map[string]bool // a StatefulSet's volumeClaimTemplates
}

type checker struct {
	objs     []*object
	problems []string
	toml     string // the relay.toml the relay containers mount
	tomlFrom string
}

func (c *checker) problem(o *object, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if o != nil {
		msg = o.String() + ": " + msg
	}
	c.problems = append(c.problems, msg)
}

func (c *checker) find(kind, name string) *object {
	for _, o := range c.objs {
		if o.kind() == kind && o.name() == name {
			return o
		}
	}
	return nil
}

func (c *checker) run() {
	seen := map[string]*object{}
	for _, o := range c.objs {
		if o.kind() == "" || o.name() == "" {
			c.problem(o, "no kind or metadata.name")
			continue
		}
		id := o.kind() + "/" + o.name()
		if prev := seen[id]; prev != nil {
			c.problem(o, "defined twice (also at %s:%d)", prev.file, prev.line)
		}
		seen[id] = o
	}
	ws := c.workloads()
	for _, w := range ws {
		c.checkWorkload(w)
	}
	for _, o := range c.objs {
		switch o.kind() {
		case "Service":
			c.checkService(o, ws)
		case "PodDisruptionBudget":
			sel := labelsOf(get(o.m, "spec", "selector", "matchLabels"))
			if len(selected(sel, ws)) == 0 {
				c.problem(o, "spec.selector matches no pod template in the manifests")
			}
		}
	}
}

func (c *checker) workloads() []*workload {
	var ws []*workload
	for _, o := range c.objs {
		switch o.kind() {
		case "Pod":
			ws = append(ws, &workload{obj: o, labels: labelsOf(get(o.m, "metadata", "labels")), spec: mapOf(o.m, "spec")})
		case "StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job":
			w := &workload{obj: o, labels: labelsOf(get(o.m, "spec", "template", "metadata", "labels")),
				spec: mapOf(o.m, "spec", "template", "spec"), claims: map[string]bool{}}
			for _, t := range list(o.m, "spec", "volumeClaimTemplates") {
				w.claims[str(t, "metadata", "name")] = true
			}
			if sel := get(o.m, "spec", "selector"); sel != nil || o.kind() != "Job" {
				ml := labelsOf(get(sel, "matchLabels"))
				if get(sel, "matchExpressions") == nil && !matches(ml, w.labels) {
					c.problem(o, "spec.selector.matchLabels %v does not select the template's labels %v", ml, w.labels)
				}
			}
			ws = append(ws, w)
		}
	}
	return ws
}

func (c *checker) checkWorkload(w *workload) {
	o := w.obj
	if o.kind() == "StatefulSet" {
		name := str(o.m, "spec", "serviceName")
		if svc := c.find("Service", name); name != "" && svc == nil {
			c.problem(o, "spec.serviceName %q: no such Service in the manifests", name)
		} else if svc != nil {
			if str(svc.m, "spec", "clusterIP") != "None" {
				c.problem(o, "spec.serviceName %q is not a headless Service (clusterIP: None)", name)
			}
			if !matches(labelsOf(get(svc.m, "spec", "selector")), w.labels) {
				c.problem(o, "spec.serviceName %q does not select this StatefulSet's pods", name)
			}
		}
	}
	volumes := map[string]map[string]any{}
	for _, v := range list(w.spec, "volumes") {
		vm, _ := v.(map[string]any)
		name := str(vm, "name")
		if volumes[name] != nil || w.claims[name] {
			c.problem(o, "volume %q defined twice", name)
		}
		volumes[name] = vm
		c.checkVolume(o, vm)
	}
	var ctrs []any
	ctrs = append(ctrs, list(w.spec, "initContainers")...)
	ctrs = append(ctrs, list(w.spec, "containers")...)
	for _, ct := range ctrs {
		ctr, _ := ct.(map[string]any)
		cn := str(ctr, "name")
		for _, vm := range list(ctr, "volumeMounts") {
			name := str(vm, "name")
			if volumes[name] == nil && !w.claims[name] {
				c.problem(o, "container %q mounts volume %q, which the pod does not have", cn, name)
			}
		}
		for _, e := range list(ctr, "env") {
			if ref := mapOf(e, "valueFrom", "secretKeyRef"); ref != nil {
				c.checkKey(o, "Secret", str(ref, "name"), str(ref, "key"), get(ref, "optional") == true)
			}
			if ref := mapOf(e, "valueFrom", "configMapKeyRef"); ref != nil {
				c.checkKey(o, "ConfigMap", str(ref, "name"), str(ref, "key"), get(ref, "optional") == true)
			}
		}
		for _, e := range list(ctr, "envFrom") {
			if ref := mapOf(e, "secretRef"); ref != nil {
				c.checkKey(o, "Secret", str(ref, "name"), "", get(ref, "optional") == true)
			}
			if ref := mapOf(e, "configMapRef"); ref != nil {
				c.checkKey(o, "ConfigMap", str(ref, "name"), "", get(ref, "optional") == true)
			}
		}
		names, _ := containerPorts(ctr)
		for _, probe := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
			for _, h := range []string{"httpGet", "tcpSocket", "grpc"} {
				if p, ok := get(ctr, probe, h, "port").(string); ok {
					if _, has := names[p]; !has {
						c.problem(o, "container %q: %s port %q is not one of its named ports", cn, probe, p)
					}
				}
			}
		}
		if isRelay(ctr) {
			c.checkRelay(w, ctr, volumes)
		}
	}
}

func (c *checker) checkVolume(o *object, v map[string]any) {
	if cm := mapOf(v, "configMap"); cm != nil {
		c.checkItems(o, "ConfigMap", str(cm, "name"), list(cm, "items"), get(cm, "optional") == true)
	}
	if s := mapOf(v, "secret"); s != nil {
		c.checkItems(o, "Secret", str(s, "secretName"), list(s, "items"), get(s, "optional") == true)
	}
	for _, src := range list(v, "projected", "sources") {
		if cm := mapOf(src, "configMap"); cm != nil {
			c.checkItems(o, "ConfigMap", str(cm, "name"), list(cm, "items"), get(cm, "optional") == true)
		}
		if s := mapOf(src, "secret"); s != nil {
			c.checkItems(o, "Secret", str(s, "name"), list(s, "items"), get(s, "optional") == true)
		}
	}
	if pvc := mapOf(v, "persistentVolumeClaim"); pvc != nil {
		claim := str(pvc, "claimName")
		if c.find("PersistentVolumeClaim", claim) == nil && !c.stsClaim(claim) {
			c.problem(o, "claim %q is neither in the manifests nor a claim of a StatefulSet's volumeClaimTemplates", claim)
		}
	}
}

// stsClaim reports whether claim is named as a StatefulSet names its claims: TEMPLATE-STS-N.
func (c *checker) stsClaim(claim string) bool {
	for _, o := range c.objs {
		if o.kind() != "StatefulSet" {
			continue
		}
		for _, t := range list(o.m, "spec", "volumeClaimTemplates") {
			re := regexp.MustCompile("^" + regexp.QuoteMeta(str(t, "metadata", "name")+"-"+o.name()+"-") + "[0-9]+$")
			if re.MatchString(claim) {
				return true
			}
		}
	}
	return false
}

func (c *checker) checkItems(o *object, kind, name string, items []any, optional bool) {
	if len(items) == 0 {
		c.checkKey(o, kind, name, "", optional)
	}
	for _, it := range items {
		c.checkKey(o, kind, name, str(it, "key"), optional)
	}
}

// checkKey: the ConfigMap or Secret name exists in the manifests and holds key (any key: "").
func (c *checker) checkKey(o *object, kind, name, key string, optional bool) {
	if optional {
		return
	}
	t := c.find(kind, name)
	if t == nil {
		c.problem(o, "%s %q is not in the manifests", kind, name)
		return
	}
	if key != "" && !hasKey(t, key) {
		c.problem(o, "%s %q has no key %q", kind, name, key)
	}
}

func hasKey(t *object, key string) bool {
	fields := []string{"data", "binaryData"}
	if t.kind() == "Secret" {
		fields = []string{"data", "stringData"}
	}
	for _, f := range fields {
		if _, ok := mapOf(t.m, f)[key]; ok {
			return true
		}
	}
	return false
}

func (c *checker) checkService(o *object, ws []*workload) {
	sel := labelsOf(get(o.m, "spec", "selector"))
	if len(sel) == 0 {
		return // endpoints managed elsewhere
	}
	pods := selected(sel, ws)
	if len(pods) == 0 {
		c.problem(o, "spec.selector %v matches no pod template in the manifests", sel)
		return
	}
	for _, p := range list(o.m, "spec", "ports") {
		target := get(p, "targetPort")
		if target == nil {
			target = get(p, "port")
		}
		for _, w := range pods {
			found := false
			for _, ct := range list(w.spec, "containers") {
				names, numbers := containerPorts(ct)
				switch t := target.(type) {
				case string:
					_, found = names[t]
				case int:
					found = found || numbers[t]
				}
				if found {
					break
				}
			}
			if !found {
				c.problem(o, "port %q: target port %v is not a port of %s/%s's containers", str(p, "name"), target, w.obj.kind(), w.obj.name())
			}
		}
	}
}

// relayConfig is the part of relay.toml that has to fit the pod. `relay check` validates
// the whole file.
type relayConfig struct {
	SMTP struct {
		Listen            *string `toml:"listen"`
		ImplicitTLSListen string  `toml:"implicit_tls_listen"`
		TLSCert           string  `toml:"tls_cert"`
		TLSKey            string  `toml:"tls_key"`
	} `toml:"smtp"`
	DKIM struct {
		PrivateKey string `toml:"private_key"`
		Keys       []struct {
			PrivateKey string `toml:"private_key"`
		} `toml:"keys"`
	} `toml:"dkim"`
	Upstream struct {
		PasswordEnv  string `toml:"password_env"`
		PasswordFile string `toml:"password_file"`
	} `toml:"upstream"`
	Queue struct {
		Mode string `toml:"mode"`
		Dir  string `toml:"dir"`
	} `toml:"queue"`
	HTTP struct {
		Listen string `toml:"listen"`
	} `toml:"http"`
}

func isRelay(ctr map[string]any) bool {
	for _, a := range list(ctr, "args") {
		if s, _ := a.(string); s == "-config" || strings.HasPrefix(s, "-config=") {
			return true
		}
	}
	_, ok := envValue(ctr, "RELAY_CONFIG")
	return ok
}

func envValue(ctr map[string]any, name string) (string, bool) {
	for _, e := range list(ctr, "env") {
		if str(e, "name") == name {
			return str(e, "value"), true
		}
	}
	return "", false
}

func (c *checker) checkRelay(w *workload, ctr map[string]any, volumes map[string]map[string]any) {
	o := w.obj
	cn := str(ctr, "name")
	if g, ok := asInt(get(w.spec, "terminationGracePeriodSeconds")); ok && g <= relayGraceSeconds {
		c.problem(o, "terminationGracePeriodSeconds %d: the relay takes up to %d s to stop; give it more", g, relayGraceSeconds)
	}
	cfgPath, _ := envValue(ctr, "RELAY_CONFIG")
	args := list(ctr, "args")
	for i, a := range args {
		s, _ := a.(string)
		if s == "-config" && i+1 < len(args) {
			cfgPath, _ = args[i+1].(string)
		} else if v, ok := strings.CutPrefix(s, "-config="); ok {
			cfgPath = v
		}
	}
	if !path.IsAbs(cfgPath) {
		c.problem(o, "container %q: the configuration path %q is not absolute", cn, cfgPath)
		return
	}
	src, why := c.resolve(w, ctr, volumes, cfgPath)
	if why != "" || src.kind != "ConfigMap" {
		c.problem(o, "container %q: %s is not a ConfigMap key %s", cn, cfgPath, why)
		return
	}
	text := str(c.find("ConfigMap", src.name).m, "data", src.key)
	at := fmt.Sprintf("ConfigMap %s key %s", src.name, src.key)
	if c.toml != "" && c.toml != text {
		c.problem(o, "container %q mounts a relay.toml (%s) other than %s's", cn, at, c.tomlFrom)
	}
	c.toml, c.tomlFrom = text, at
	var cfg relayConfig
	if _, err := toml.Decode(text, &cfg); err != nil {
		c.problem(o, "%s: %v", at, err)
		return
	}
	cfgDir := path.Dir(cfgPath)
	abs := func(p string) string {
		if path.IsAbs(p) {
			return path.Clean(p)
		}
		return path.Join(cfgDir, p)
	}
	names, numbers := containerPorts(ctr)
	listen := func(key, addr string) int {
		host, port, err := net.SplitHostPort(addr)
		n, err2 := strconv.Atoi(port)
		if err != nil || err2 != nil {
			c.problem(o, "%s: %s %q is not host:port", at, key, addr)
			return 0
		}
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			c.problem(o, "%s: %s %q listens on %s only: the kubelet and the Services cannot reach it (use 0.0.0.0)", at, key, addr, host)
		}
		if !numbers[n] {
			c.problem(o, "%s: %s port %d is not a containerPort of container %q", at, key, n, cn)
		}
		return n
	}
	smtpListen := "127.0.0.1:2525" // the relay's default
	if cfg.SMTP.Listen != nil {
		smtpListen = *cfg.SMTP.Listen
	}
	if smtpListen != "" {
		listen("smtp.listen", smtpListen)
	}
	if cfg.SMTP.ImplicitTLSListen != "" {
		listen("smtp.implicit_tls_listen", cfg.SMTP.ImplicitTLSListen)
	}
	httpPort := 0
	if cfg.HTTP.Listen != "" {
		httpPort = listen("http.listen", cfg.HTTP.Listen)
	}
	for _, probe := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
		port := get(ctr, probe, "httpGet", "port")
		if port == nil {
			continue
		}
		n, ok := asInt(port)
		if s, isName := port.(string); isName {
			n, ok = names[s]
		}
		switch {
		case cfg.HTTP.Listen == "":
			c.problem(o, "container %q has an HTTP %s but %s sets no [http] listen", cn, probe, at)
		case ok && n != httpPort:
			c.problem(o, "container %q: %s on port %d, but [http] listen is port %d", cn, probe, n, httpPort)
		}
	}
	if cfg.Queue.Mode != "direct" {
		dir := cfg.Queue.Dir
		if dir == "" {
			dir = "./spool"
		}
		src, why := c.resolve(w, ctr, volumes, abs(dir))
		switch {
		case why != "":
			c.problem(o, "%s: queue.dir %s %s: the spool must be on the pod's own persistent volume", at, abs(dir), why)
		case src.kind != "claim":
			c.problem(o, "%s: queue.dir %s is on a %s volume: the spool must be on the pod's own persistent volume", at, abs(dir), src.kind)
		case src.readOnly:
			c.problem(o, "%s: queue.dir %s is mounted read-only", at, abs(dir))
		}
	}
	files := [][2]string{
		{"smtp.tls_cert", cfg.SMTP.TLSCert},
		{"smtp.tls_key", cfg.SMTP.TLSKey},
		{"dkim.private_key", cfg.DKIM.PrivateKey},
		{"upstream.password_file", cfg.Upstream.PasswordFile},
	}
	for i, k := range cfg.DKIM.Keys {
		files = append(files, [2]string{fmt.Sprintf("dkim.keys[%d].private_key", i), k.PrivateKey})
	}
	for _, f := range files {
		key, p := f[0], f[1]
		if p == "" {
			continue
		}
		src, why := c.resolve(w, ctr, volumes, abs(p))
		switch {
		case why != "":
			c.problem(o, "%s: %s %s %s", at, key, abs(p), why)
		case src.kind != "Secret" && src.kind != "ConfigMap":
			c.problem(o, "%s: %s %s is on a %s volume, not from a Secret", at, key, abs(p), src.kind)
		case src.kind == "ConfigMap" && key != "smtp.tls_cert":
			c.problem(o, "%s: %s %s comes from ConfigMap %s: secrets belong in a Secret", at, key, abs(p), src.name)
		}
	}
	if env := cfg.Upstream.PasswordEnv; env != "" {
		if _, ok := envValue(ctr, env); !ok {
			c.problem(o, "%s: upstream.password_env %s is not set in container %q's env", at, env, cn)
		}
	}
}

// source is where a path inside a container comes from.
type source struct {
	kind     string // "ConfigMap", "Secret", "claim", "emptyDir", or another volume type
	name     string // the ConfigMap or Secret
	key      string
	readOnly bool
}

// resolve finds the volume, and for a ConfigMap or Secret the key, behind path p of the
// container; why says what is wrong when it cannot.
func (c *checker) resolve(w *workload, ctr map[string]any, volumes map[string]map[string]any, p string) (source, string) {
	p = path.Clean(p)
	var mount map[string]any
	best := ""
	for _, vm := range list(ctr, "volumeMounts") {
		mp := path.Clean(str(vm, "mountPath"))
		if (p == mp || strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			mount, _ = vm.(map[string]any)
			best = mp
		}
	}
	if mount == nil {
		return source{}, "is on no volume (the container's own, read-only file system)"
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(p, best), "/")
	if sub := str(mount, "subPath"); sub != "" {
		rel = path.Join(sub, rel)
	}
	ro := get(mount, "readOnly") == true
	vname := str(mount, "name")
	if w.claims[vname] {
		return source{kind: "claim", readOnly: ro}, ""
	}
	v := volumes[vname]
	type cand struct {
		kind, name string
		items      []any
	}
	var cands []cand
	switch {
	case v == nil:
		return source{}, "is on volume " + vname + ", which the pod does not have"
	case get(v, "persistentVolumeClaim") != nil:
		return source{kind: "claim", readOnly: ro || get(v, "persistentVolumeClaim", "readOnly") == true}, ""
	case get(v, "configMap") != nil:
		cands = append(cands, cand{"ConfigMap", str(v, "configMap", "name"), list(v, "configMap", "items")})
	case get(v, "secret") != nil:
		cands = append(cands, cand{"Secret", str(v, "secret", "secretName"), list(v, "secret", "items")})
	case get(v, "projected") != nil:
		for _, s := range list(v, "projected", "sources") {
			if get(s, "configMap") != nil {
				cands = append(cands, cand{"ConfigMap", str(s, "configMap", "name"), list(s, "configMap", "items")})
			}
			if get(s, "secret") != nil {
				cands = append(cands, cand{"Secret", str(s, "secret", "name"), list(s, "secret", "items")})
			}
		}
	default:
		for k := range v {
			if k != "name" {
				return source{kind: k, readOnly: ro}, ""
			}
		}
	}
	for _, cd := range cands {
		t := c.find(cd.kind, cd.name)
		if len(cd.items) > 0 {
			for _, it := range cd.items {
				if path.Clean(str(it, "path")) == rel {
					return source{kind: cd.kind, name: cd.name, key: str(it, "key"), readOnly: true}, ""
				}
			}
		} else if t != nil && !strings.Contains(rel, "/") && hasKey(t, rel) {
			return source{kind: cd.kind, name: cd.name, key: rel, readOnly: true}, ""
		}
	}
	return source{}, fmt.Sprintf("is not a file of volume %s (no ConfigMap or Secret key is projected to %s)", vname, rel)
}

func containerPorts(ctr any) (names map[string]int, numbers map[int]bool) {
	names, numbers = map[string]int{}, map[int]bool{}
	for _, p := range list(ctr, "ports") {
		n, _ := asInt(get(p, "containerPort"))
		numbers[n] = true
		if name := str(p, "name"); name != "" {
			names[name] = n
		}
	}
	return names, numbers
}

func selected(sel map[string]string, ws []*workload) []*workload {
	var out []*workload
	for _, w := range ws {
		if matches(sel, w.labels) {
			out = append(out, w)
		}
	}
	return out
}

// matches: a non-empty selector whose every label the set has.
func matches(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func get(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any, keys ...string) string { s, _ := get(v, keys...).(string); return s }
func list(v any, keys ...string) []any { l, _ := get(v, keys...).([]any); return l }
func mapOf(v any, keys ...string) map[string]any {
	m, _ := get(v, keys...).(map[string]any)
	return m
}

func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int64:
		return int(n), true
	case uint64:
		return int(n), true
	case float64:
		return int(n), n == float64(int(n))
	}
	return 0, false
}

func labelsOf(v any) map[string]string {
	out := map[string]string{}
	m, _ := v.(map[string]any)
	for k, x := range m {
		out[k] = fmt.Sprint(x)
	}
	return out
}
