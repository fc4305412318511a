// helm-render renders a Helm chart's templates as `helm template` does, for tests/chart.rs:
// Helm is not packaged for Debian, but its template engine is Go's text/template with sprig's
// functions and a few of Helm's own, which this program adds (include, required, toYaml).
// It takes the chart's directory, the release's name and namespace as arguments and the
// final values (values.yaml merged with the test's, checked against values.schema.json by
// the test) as JSON on stdin; it prints each rendered template that is not empty as a YAML
// document headed `# Source: CHART/templates/FILE`. Unlike Helm it fails on a missing value
// (as `helm lint --strict` does), and it knows nothing of .Capabilities, .Files or lookup:
// the chart uses none of them.
//
// Built by the test in GOPATH mode against Debian's golang-github-masterminds-sprig-dev and
// golang-github-ghodss-yaml-dev (Helm's toYaml uses sigs.k8s.io/yaml, a fork of the latter).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/ghodss/yaml"
)

func main() {
	if len(os.Args) != 4 {
		fail(fmt.Errorf("usage: helm-render CHART_DIR RELEASE NAMESPACE < values.json"))
	}
	out, err := render(os.Args[1], os.Args[2], os.Args[3])
	if err != nil {
		fail(err)
	}
	fmt.Print(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "helm-render:", err)
	os.Exit(1)
}

func render(chartDir, release, namespace string) (string, error) {
	chart, err := readChart(chartDir)
	if err != nil {
		return "", err
	}
	var values map[string]interface{}
	decoder := json.NewDecoder(os.Stdin)
	decoder.UseNumber()
	if err := decoder.Decode(&values); err != nil {
		return "", fmt.Errorf("values on stdin: %w", err)
	}
	name := chart["Name"].(string)
	files, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	if err != nil {
		return "", err
	}
	sort.Strings(files)

	templates := template.New(name)
	templates.Funcs(functions(templates)).Option("missingkey=error")
	var rendered []string
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		templateName := name + "/templates/" + filepath.Base(file)
		if _, err := templates.New(templateName).Parse(string(text)); err != nil {
			return "", err
		}
		// Partials (_*.tpl) only define; NOTES.txt is not a manifest.
		base := filepath.Base(file)
		if !strings.HasPrefix(base, "_") && base != "NOTES.txt" {
			rendered = append(rendered, templateName)
		}
	}

	var out strings.Builder
	for _, templateName := range rendered {
		top := map[string]interface{}{
			"Values":  values,
			"Chart":   chart,
			"Release": map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
			"Template": map[string]interface{}{
				"Name":     templateName,
				"BasePath": name + "/templates",
			},
		}
		var buffer bytes.Buffer
		if err := templates.ExecuteTemplate(&buffer, templateName, top); err != nil {
			return "", err
		}
		if strings.TrimSpace(buffer.String()) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", templateName, buffer.String())
	}
	return out.String(), nil
}

// Chart.yaml's fields, named as Helm exposes them in .Chart (Name, Version, AppVersion...).
func readChart(chartDir string) (map[string]interface{}, error) {
	text, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	var fields map[string]interface{}
	if err := yaml.Unmarshal(text, &fields); err != nil {
		return nil, fmt.Errorf("Chart.yaml: %w", err)
	}
	chart := map[string]interface{}{}
	for key, value := range fields {
		chart[strings.ToUpper(key[:1])+key[1:]] = value
	}
	if _, ok := chart["Name"].(string); !ok {
		return nil, fmt.Errorf("Chart.yaml has no name")
	}
	return chart, nil
}

// sprig's functions without the environment's (as Helm), and Helm's include, required and
// toYaml.
func functions(templates *template.Template) template.FuncMap {
	functions := sprig.TxtFuncMap()
	delete(functions, "env")
	delete(functions, "expandenv")
	functions["include"] = func(name string, data interface{}) (string, error) {
		var buffer bytes.Buffer
		err := templates.ExecuteTemplate(&buffer, name, data)
		return buffer.String(), err
	}
	functions["required"] = func(message string, value interface{}) (interface{}, error) {
		if value == nil {
			return nil, fmt.Errorf(message)
		}
		if text, ok := value.(string); ok && text == "" {
			return nil, fmt.Errorf(message)
		}
		return value, nil
	}
	functions["toYaml"] = func(value interface{}) string {
		data, err := yaml.Marshal(value)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	return functions
}
