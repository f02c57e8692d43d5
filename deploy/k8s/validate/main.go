// Command validate checks the relay's Kubernetes manifests offline; deploy/ci.sh runs it.
//
//	validate schemas -swagger FILE -out DIR
//
// turns a Kubernetes release's OpenAPI v2 document (api/openapi-spec/swagger.json in the
// k8s.io/kubernetes module, which the Go module proxy serves) into the standalone, strict
// JSON schemas that kubeconform reads with
// -schema-location 'DIR/{{.ResourceKind}}{{.KindSuffix}}.json': one file per kind, every
// object closed with additionalProperties: false, so a misspelt field is an error.
//
//	validate refs [-toml-out FILE] MANIFEST...
//
// checks what no schema can: that the objects refer to one another (selectors, Service
// ports, ConfigMap and Secret keys, claims, probe ports) and that the relay.toml the pods
// mount fits them (listen addresses and ports, the spool on the claim, key files and the
// password variable where the pod has them). -toml-out writes that relay.toml, for
// `relay check`.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "schemas":
		fs := flag.NewFlagSet("schemas", flag.ExitOnError)
		swagger := fs.String("swagger", "", "OpenAPI v2 document of a Kubernetes release (swagger.json)")
		out := fs.String("out", "", "directory to write the schemas to")
		fs.Parse(os.Args[2:])
		if *swagger == "" || *out == "" {
			usage()
		}
		n, err := writeSchemas(*swagger, *out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "validate schemas: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("validate schemas: %d kinds written to %s\n", n, *out)
	case "refs":
		fs := flag.NewFlagSet("refs", flag.ExitOnError)
		tomlOut := fs.String("toml-out", "", "write the relay.toml the pods mount to this file")
		fs.Parse(os.Args[2:])
		if fs.NArg() == 0 {
			usage()
		}
		objs, err := readManifests(fs.Args())
		if err != nil {
			fmt.Fprintf(os.Stderr, "validate refs: %v\n", err)
			os.Exit(1)
		}
		c := &checker{objs: objs}
		c.run()
		if *tomlOut != "" && len(c.problems) == 0 {
			if c.toml == "" {
				c.problem(nil, "no relay container mounts a relay.toml from a ConfigMap")
			} else if err := os.WriteFile(*tomlOut, []byte(c.toml), 0o644); err != nil {
				c.problem(nil, "%v", err)
			}
		}
		if len(c.problems) > 0 {
			for _, p := range c.problems {
				fmt.Fprintln(os.Stderr, p)
			}
			fmt.Fprintf(os.Stderr, "validate refs: %d problems in %d objects\n", len(c.problems), len(objs))
			os.Exit(1)
		}
		fmt.Printf("validate refs: %d objects, references and relay.toml consistent\n", len(objs))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: validate schemas -swagger FILE -out DIR\n       validate refs [-toml-out FILE] MANIFEST...")
	os.Exit(2)
}
