// gorender: the chart's templates rendered by Go's text/template with Sprig, set up
// as Helm's engine sets them up (sprig.TxtFuncMap without env/expandenv, toYaml as
// sigs.k8s.io/yaml marshals, missingkey=zero, "<no value>" removed), for the context
// (.Values, .Release, .Chart) given as JSON on stdin; each template's output follows
// a line "##### NAME". helm_chart.rs's go_text_template_and_sprig_render_the_same
// compares it with the test's renderer when NETFENCE_GORENDER names the binary.
// Not Helm itself: no include/tpl/required/lookup (the chart uses none).
//
// Built from Debian 12's packages (no module download):
//   apt-get install golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev
//   GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/gorender agent/tests/helm_chart/gorender.go
//   NETFENCE_GORENDER=/tmp/gorender cargo test -p netfence --test helm_chart
// (Debian's Sprig 3 lives at github.com/Masterminds/sprig; with modules it is .../sprig/v3.)
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

// sigs.k8s.io/yaml's Marshal: JSON, then JSONToYAML (yaml.v2 over the JSON).
func toYAML(v interface{}) string {
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return ""
	}
	y, err := yaml.Marshal(obj)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(y), "\n")
}

func main() {
	dir := os.Args[1]
	in, _ := io.ReadAll(os.Stdin)
	var top map[string]interface{}
	if err := json.Unmarshal(in, &top); err != nil {
		panic(err)
	}
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	files, _ := filepath.Glob(filepath.Join(dir, "templates", "*"))
	sort.Strings(files)
	for _, f := range files {
		src, _ := os.ReadFile(f)
		t, err := template.New(filepath.Base(f)).Option("missingkey=zero").Funcs(funcs).Parse(string(src))
		if err != nil {
			panic(err)
		}
		var b bytes.Buffer
		if err := t.Execute(&b, top); err != nil {
			panic(err)
		}
		fmt.Printf("##### %s\n%s", filepath.Base(f), strings.ReplaceAll(b.String(), "<no value>", ""))
	}
}
