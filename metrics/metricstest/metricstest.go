// Package metricstest reads Prometheus text exposition for tests: what a scrape of hearth's
// listener returned, and the metric names a dashboard's queries use.
package metricstest

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are the metric families of one scrape, by name.
type Families map[string]*dto.MetricFamily

// Parse reads the text format.
func Parse(r io.Reader) (Families, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse the metrics: %w", err)
	}
	return fams, nil
}

// FromGathered indexes families a registry gathered.
func FromGathered(fams []*dto.MetricFamily) Families {
	out := Families{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// Value is the value of the series of name whose labels include labels (name, value pairs): a
// counter's or gauge's value, a histogram's sample count. ok is false when there is no such series.
func (f Families) Value(name string, labels ...string) (v float64, ok bool) {
	fam := f[name]
	if fam == nil {
		return 0, false
	}
	for _, m := range fam.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Has reports whether a series of the queried name exists; a histogram's _bucket, _sum and _count
// series are its family's.
func (f Families) Has(name string) bool {
	if f[name] != nil {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if fam := f[base]; fam != nil && fam.GetType() == dto.MetricType_HISTOGRAM {
				return true
			}
		}
	}
	return false
}

// metricName finds the names of hearth's metrics in a PromQL expression. Every metric hearth
// exports starts with "hearth_"; label names and PromQL's functions never do.
var metricName = regexp.MustCompile(`\bhearth_[a-zA-Z0-9_]+`)

// QueriedMetrics lists, sorted and once each, the hearth metrics that exprs query.
func QueriedMetrics(exprs []string) []string {
	var names []string
	for _, e := range exprs {
		for _, n := range metricName.FindAllString(e, -1) {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names
}

// DashboardQueries returns the PromQL of a Grafana dashboard's JSON: every panel target's expr
// and every template variable's query, wherever they are nested (rows hold panels too).
func DashboardQueries(dashboard []byte) ([]string, error) {
	var v any
	if err := json.Unmarshal(dashboard, &v); err != nil {
		return nil, fmt.Errorf("parse the dashboard: %w", err)
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					out = append(out, s)
					continue
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
	return out, nil
}
