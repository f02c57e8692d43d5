package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// writeSchemas converts the definitions of an OpenAPI v2 document the way yannh's
// openapi2jsonschema does for kubeconform's own schema repository (--kubernetes --strict
// --stand-alone): each kind a file named kind[-group]-version.json holding the kind's schema
// and, under "definitions", every definition it reaches, so it needs no other file.
func writeSchemas(swaggerPath, outDir string) (int, error) {
	b, err := os.ReadFile(swaggerPath)
	if err != nil {
		return 0, err
	}
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, fmt.Errorf("%s: %v", swaggerPath, err)
	}
	if len(doc.Definitions) == 0 {
		return 0, fmt.Errorf("%s: no definitions", swaggerPath)
	}
	defs := make(map[string]any, len(doc.Definitions))
	for name, d := range doc.Definitions {
		defs[name] = convert(name, d)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return 0, err
	}
	names := make([]string, 0, len(doc.Definitions))
	for name := range doc.Definitions {
		names = append(names, name)
	}
	sort.Strings(names)
	written := map[string]string{}
	for _, name := range names {
		gvks, _ := doc.Definitions[name]["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk, _ := g.(map[string]any)
			group, _ := gvk["group"].(string)
			version, _ := gvk["version"].(string)
			kind, _ := gvk["kind"].(string)
			if kind == "" || version == "" {
				continue
			}
			file := kindFile(group, version, kind)
			if _, dup := written[file]; dup {
				continue // two definitions of one kind and version: keep the first
			}
			written[file] = name
			root := map[string]any{}
			for k, v := range defs[name].(map[string]any) {
				root[k] = v
			}
			reached := map[string]any{}
			reach(defs, defs[name], reached)
			root["$schema"] = "http://json-schema.org/draft-04/schema#"
			root["definitions"] = reached
			out, err := json.Marshal(root)
			if err != nil {
				return 0, err
			}
			if err := os.WriteFile(filepath.Join(outDir, file), out, 0o644); err != nil {
				return 0, err
			}
		}
	}
	if len(written) == 0 {
		return 0, fmt.Errorf("%s: no definition has x-kubernetes-group-version-kind", swaggerPath)
	}
	return len(written), nil
}

// kindFile is the name kubeconform's {{.ResourceKind}}{{.KindSuffix}} gives a kind:
// "statefulset-apps-v1.json", "service-v1.json", "role-rbac-v1.json" (the group's first label).
func kindFile(group, version, kind string) string {
	s := strings.ToLower(kind)
	if group != "" {
		s += "-" + strings.ToLower(strings.Split(group, ".")[0])
	}
	return s + "-" + strings.ToLower(version) + ".json"
}

// convert rewrites one definition for a JSON-schema validator: int-or-string fields take a
// string or an integer and quantities a string or a number (as the API server decodes them),
// every object with properties is closed (strict: an unknown field is an error) unless the
// API preserves unknown fields there, and descriptions and x-kubernetes-* annotations go.
func convert(name string, d map[string]any) any {
	if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
		return oneOf("string", "number")
	}
	return convertNode(d)
}

func convertNode(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	if m["format"] == "int-or-string" || m["x-kubernetes-int-or-string"] == true {
		return oneOf("string", "integer")
	}
	out := make(map[string]any, len(m))
	for k, val := range m {
		switch {
		case k == "description" || strings.HasPrefix(k, "x-kubernetes-"):
		case k == "properties":
			props := map[string]any{}
			for pn, ps := range val.(map[string]any) {
				props[pn] = convertNode(ps)
			}
			out[k] = props
		case k == "items" || k == "additionalProperties" || k == "not":
			out[k] = convertNode(val)
		case k == "allOf" || k == "anyOf" || k == "oneOf":
			var list []any
			for _, s := range val.([]any) {
				list = append(list, convertNode(s))
			}
			out[k] = list
		default:
			out[k] = val
		}
	}
	if _, has := out["properties"]; has && m["additionalProperties"] == nil && m["x-kubernetes-preserve-unknown-fields"] != true {
		out["additionalProperties"] = false
	}
	return out
}

func oneOf(types ...string) map[string]any {
	var list []any
	for _, t := range types {
		list = append(list, map[string]any{"type": t})
	}
	return map[string]any{"oneOf": list}
}

// reach adds to seen every definition that v refers to, directly or not.
func reach(defs map[string]any, v any, seen map[string]any) {
	switch v := v.(type) {
	case map[string]any:
		if ref, ok := v["$ref"].(string); ok {
			name := strings.TrimPrefix(ref, "#/definitions/")
			if _, done := seen[name]; !done {
				if d, ok := defs[name]; ok {
					seen[name] = d
					reach(defs, d, seen)
				}
			}
		}
		for _, x := range v {
			reach(defs, x, seen)
		}
	case []any:
		for _, x := range v {
			reach(defs, x, seen)
		}
	}
}
