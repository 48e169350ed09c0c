// Command argocd-harness runs an Argo CD resource health check (Lua) against one object
// the way Argo CD does, and prints the result as JSON: {"status": ..., "message": ...}.
//
// It mirrors Argo CD's util/lua VM for resource.customizations health scripts: a gopher-lua
// state with the standard libraries skipped, then only package, base, table and a safe os
// library opened (no string, math or io), a one-second deadline, the object converted from
// JSON to Lua tables and set as the global `obj`, and the returned table encoded to JSON
// and read as a health status. A status Argo CD does not know becomes Unknown, as there.
//
// Usage: argocd-harness -script PgmlCluster.lua -object obj.yaml   (-object - reads stdin)
//
// A Lua error, a script that returns no table or a result that is not a health status
// exits 1 with the reason on stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// Health is what Argo CD reads from the table a health script returns.
type Health struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

// The statuses Argo CD accepts from a script (gitops-engine's HealthStatusCode).
var validStatus = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true,
	"Healthy": true, "Degraded": true, "Missing": true,
}

func main() {
	script := flag.String("script", "", "health Lua file")
	object := flag.String("object", "", "object as YAML or JSON (- for stdin)")
	flag.Parse()
	if *script == "" || *object == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: argocd-harness -script FILE.lua -object FILE|-")
		os.Exit(2)
	}
	h, err := run(*script, *object)
	if err != nil {
		fmt.Fprintf(os.Stderr, "argocd-harness: %s: %v\n", *script, err)
		os.Exit(1)
	}
	out, _ := json.Marshal(h)
	fmt.Println(string(out))
}

func run(scriptPath, objectPath string) (*Health, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return nil, err
	}
	var raw []byte
	if objectPath == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(objectPath)
	}
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("object: %w", err)
	}
	if obj == nil {
		return nil, errors.New("object: empty")
	}
	return ExecuteHealthLua(obj, string(script))
}

// ExecuteHealthLua runs `script` with `obj` as Argo CD runs a custom health check.
func ExecuteHealthLua(obj map[string]any, script string) (*Health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, fmt.Errorf("opening %s: %w", lib.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	ret := l.Get(-1)
	if ret.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	v, err := fromLua(ret, 0)
	if err != nil {
		return nil, err
	}
	encoded, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	h := &Health{}
	if err := json.Unmarshal(encoded, h); err != nil {
		return nil, fmt.Errorf("the returned table is not a health status: %w (%s)", err, encoded)
	}
	if !validStatus[h.Status] {
		return &Health{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return h, nil
}

// openSafeOs opens an os table with only os.time(), as the part of Argo CD's safe os
// library a script could rely on here (no file, process or environment access).
func openSafeOs(l *lua.LState) int {
	mod := l.RegisterModule(lua.OsLibName, map[string]lua.LGFunction{
		"time": func(l *lua.LState) int {
			if l.GetTop() != 0 {
				l.RaiseError("os.time with arguments is not provided by this harness")
			}
			l.Push(lua.LNumber(time.Now().Unix()))
			return 1
		},
	})
	l.Push(mod)
	return 1
}

// toLua converts a decoded JSON value to Lua values as Argo CD does: objects and arrays
// become tables (arrays 1-based), numbers LNumber, null nil.
func toLua(l *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case int:
		return lua.LNumber(x)
	case json.Number:
		return lua.LString(x)
	case string:
		return lua.LString(x)
	case []any:
		t := l.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetH(lua.LString(k), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// fromLua converts a returned Lua value for JSON encoding as gopher-json does: a table
// with an array part is an array, any other table an object with string keys.
func fromLua(v lua.LValue, depth int) (any, error) {
	if depth > 100 {
		return nil, errors.New("nested table too deep")
	}
	switch x := v.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		return bool(x), nil
	case lua.LNumber:
		return float64(x), nil
	case lua.LString:
		return string(x), nil
	case *lua.LTable:
		if x.MaxN() > 0 {
			arr := make([]any, 0, x.MaxN())
			for i := 1; i <= x.MaxN(); i++ {
				item, err := fromLua(x.RawGetInt(i), depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, item)
			}
			return arr, nil
		}
		m := map[string]any{}
		var err error
		x.ForEach(func(k, val lua.LValue) {
			if err != nil {
				return
			}
			key, ok := k.(lua.LString)
			if !ok {
				err = fmt.Errorf("cannot encode a table key of type %s", k.Type())
				return
			}
			m[string(key)], err = fromLua(val, depth+1)
		})
		if err != nil {
			return nil, err
		}
		return m, nil
	}
	return nil, fmt.Errorf("cannot encode a value of type %s", v.Type())
}
