package main

import (
	"flag"
	"fmt"
	"math/big"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// A daemon's config file (-config FILE) is HCL (or HCL's JSON syntax for
// a file named *.json): one attribute per flag of the role, named as the
// flag with '_' for '-':
//
//	data_dir         = "/var/lib/corral/server"
//	bootstrap_expect = 3
//	join             = ["10.0.0.11:8642", "10.0.0.12:8642"]
//	fast_gossip      = false
//	gc_retention     = "48h"
//
// Flags given on the command line and the environment (CORRAL_GOSSIP_KEY,
// CORRAL_JOIN_TOKEN) override the file. An unknown option or a value of
// the wrong type is an error naming the file, the line and the option.

// optionName is the config file's name of a flag.
func optionName(flagName string) string { return strings.ReplaceAll(flagName, "-", "_") }

// flagName is the flag of a config file's option.
func flagName(option string) string { return strings.ReplaceAll(option, "_", "-") }

// optionKind is the type an option's value has in the file.
type optionKind int

const (
	kindString optionKind = iota
	kindBool
	kindInt
	kindDuration
	kindList
	kindBoolOrString // -userns: true, false or "auto"
)

// kindOf tells an option's type from its flag.
func kindOf(fl *flag.Flag) optionKind {
	switch v := fl.Value.(type) {
	case *listFlag:
		return kindList
	case *usernsFlag:
		return kindBoolOrString
	case flag.Getter:
		switch v.Get().(type) {
		case bool:
			return kindBool
		case int, int64, uint, uint64:
			return kindInt
		case time.Duration:
			return kindDuration
		}
	}
	return kindString
}

// describe is the kind as the docs and error messages name it.
func (k optionKind) describe() string {
	switch k {
	case kindBool:
		return "bool"
	case kindInt:
		return "number"
	case kindDuration:
		return `duration string ("90s", "24h")`
	case kindList:
		return "list of strings"
	case kindBoolOrString:
		return `bool or "auto"`
	}
	return "string"
}

// applyConfigFile sets, from the HCL file at path, each option of fs that
// given does not name (those came from the command line or the
// environment). It returns where each option it set was written
// ("FILE:LINE"), for blameConfigFile.
func applyConfigFile(role string, fs *flag.FlagSet, path string, given map[string]bool) (map[string]string, error) {
	p := hclparse.NewParser()
	var file *hcl.File
	var diags hcl.Diagnostics
	if strings.HasSuffix(path, ".json") {
		file, diags = p.ParseJSONFile(path)
	} else {
		file, diags = p.ParseHCLFile(path)
	}
	if diags.HasErrors() {
		return nil, fmt.Errorf("config file: %w", diagError(diags))
	}
	attrs, diags := file.Body.JustAttributes()
	if diags.HasErrors() {
		return nil, fmt.Errorf("config file: %w", diagError(diags))
	}
	list := make([]*hcl.Attribute, 0, len(attrs))
	for _, a := range attrs {
		list = append(list, a)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Range.Start.Byte < list[j].Range.Start.Byte })
	origin := map[string]string{}
	for _, a := range list {
		name := flagName(a.Name)
		fl := fs.Lookup(name)
		if fl == nil || name == "config" || strings.Contains(a.Name, "-") {
			return nil, fmt.Errorf("config file: %w", diagError(hcl.Diagnostics{unknownOption(role, a)}))
		}
		val, vdiags := a.Expr.Value(nil)
		if vdiags.HasErrors() {
			return nil, fmt.Errorf("config file: %w", diagError(vdiags))
		}
		if val.IsNull() {
			continue // written as null: the default
		}
		texts, err := optionTexts(kindOf(fl), val)
		if err == nil && !given[name] {
			for _, t := range texts {
				if err = fl.Value.Set(t); err != nil {
					break
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("config file: %w", diagError(hcl.Diagnostics{{
				Severity: hcl.DiagError, Summary: "Invalid value for " + a.Name, Detail: err.Error(),
				Subject: a.Expr.Range().Ptr(),
			}}))
		}
		origin[name] = fmt.Sprintf("%s:%d", a.Range.Filename, a.Range.Start.Line)
	}
	return origin, nil
}

// unknownOption says that attribute a is no option of role, and which role
// has it where one does.
func unknownOption(role string, a *hcl.Attribute) *hcl.Diagnostic {
	d := &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unknown option " + a.Name,
		Detail:  fmt.Sprintf("corral %s has no option %q (options are the flags of 'corral %s -h', '-' written '_')", role, a.Name, role),
		Subject: a.NameRange.Ptr()}
	if a.Name == "config" {
		d.Detail = "a config file cannot name another"
		return d
	}
	if strings.Contains(a.Name, "-") && newDaemonFlagSet(role, &daemonFlags{}).Lookup(a.Name) != nil {
		d.Detail = fmt.Sprintf("write it %s: options are named as the flags with '_' for '-'", optionName(a.Name))
		return d
	}
	var others []string
	for _, r := range []string{"server", "agent", "dev"} {
		if r != role && newDaemonFlagSet(r, &daemonFlags{}).Lookup(flagName(a.Name)) != nil && !strings.Contains(a.Name, "-") {
			others = append(others, "corral "+r)
		}
	}
	if len(others) > 0 {
		d.Detail = fmt.Sprintf("%s is an option of %s, not of corral %s", a.Name, strings.Join(others, " and "), role)
	}
	return d
}

// optionTexts turns a value of the file into what the flag's Set takes:
// one text, or one per element of a list.
func optionTexts(k optionKind, v cty.Value) ([]string, error) {
	want := func() error {
		return fmt.Errorf("want a %s, got %s", k.describe(), typeName(v.Type()))
	}
	if !v.IsWhollyKnown() {
		return nil, want()
	}
	switch k {
	case kindBool:
		if v.Type() != cty.Bool {
			return nil, want()
		}
		return []string{fmt.Sprint(v.True())}, nil
	case kindBoolOrString:
		if v.Type() == cty.Bool {
			return []string{fmt.Sprint(v.True())}, nil
		}
		if v.Type() == cty.String {
			return []string{v.AsString()}, nil
		}
		return nil, want()
	case kindInt:
		if v.Type() != cty.Number {
			return nil, want()
		}
		n, acc := v.AsBigFloat().Int64()
		if acc != big.Exact {
			return nil, fmt.Errorf("want a whole number, got %s", v.AsBigFloat().Text('g', -1))
		}
		return []string{fmt.Sprint(n)}, nil
	case kindDuration:
		if v.Type() != cty.String {
			return nil, want()
		}
		return []string{v.AsString()}, nil
	case kindList:
		if v.Type() == cty.String {
			return []string{v.AsString()}, nil
		}
		if !v.Type().IsListType() && !v.Type().IsTupleType() && !v.Type().IsSetType() {
			return nil, want()
		}
		var out []string
		for it := v.ElementIterator(); it.Next(); {
			_, e := it.Element()
			if e.IsNull() || e.Type() != cty.String {
				return nil, want()
			}
			out = append(out, e.AsString())
		}
		return out, nil
	}
	// A string; a number is taken as written (cpu = 8).
	if v.Type() == cty.Number {
		s, err := convert.Convert(v, cty.String)
		if err != nil {
			return nil, want()
		}
		return []string{s.AsString()}, nil
	}
	if v.Type() != cty.String {
		return nil, want()
	}
	return []string{v.AsString()}, nil
}

// typeName names a value's type in an error message.
func typeName(t cty.Type) string {
	switch {
	case t == cty.String:
		return "a string"
	case t == cty.Number:
		return "a number"
	case t == cty.Bool:
		return "a bool"
	case t.IsTupleType(), t.IsListType(), t.IsSetType():
		return "a list"
	case t.IsObjectType(), t.IsMapType():
		return "an object"
	}
	return t.FriendlyName()
}

// diagError is the first error of diags on one line: "FILE:LINE,COL-COL:
// Summary; Detail".
func diagError(diags hcl.Diagnostics) error {
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			return hcl.Diagnostics{d}
		}
	}
	return diags
}

// flagInError finds the flag an option error names ("-max-image-size").
var flagInError = regexp.MustCompile(`-([a-z][a-z0-9-]*)`)

// blameConfigFile adds to an error about an option's value where the
// config file set it, when it came from there.
func blameConfigFile(err error, origin map[string]string) error {
	if err == nil || len(origin) == 0 {
		return err
	}
	for _, m := range flagInError.FindAllStringSubmatch(err.Error(), -1) {
		if pos, ok := origin[m[1]]; ok {
			return fmt.Errorf("%w (set as %s at %s)", err, optionName(m[1]), pos)
		}
	}
	return err
}
