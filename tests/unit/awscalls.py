"""Which AWS API calls each Kiln command makes, read from the source's syntax tree.

The scan knows a boto3 client by where it comes from, never by its variable's name:

- a call `<anything>.client("ec2", ...)` makes an EC2 client; a `.client(...)` whose service is
  not a string literal is an error, unless it is inside one of FACTORIES (functions that hand out
  the client they are asked for);
- a name, attribute, method or property is a client when it is annotated with a boto3 stub's
  client type (`EC2Client` from `types_boto3_ec2` or `mypy_boto3_ec2`), or is assigned / returns
  such a client (`self.db = aws.client("dynamodb")`, `def _ec2(self): return self.aws.client("ec2")`).

Kiln's own objects are followed by their types the same way (annotations, `x = Cloud(...)`,
`self.cloud = ...`, properties, return types, `with f() as x` for context managers), so a call
`ctx.cloud.tag_image(...)` is an edge from the calling function to `Cloud.tag_image`. The commands
in tasks.py are the roots: what a command reaches is what its role must be allowed.

The scan fails instead of guessing: a client it cannot place, a call that looks like a client
call (a botocore operation name) on something whose type it cannot tell, a waiter, an unknown
operation, or a function that makes AWS calls and that no command reaches (an edge the scan
missed) are all errors, each naming the file and line.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import botocore.session
from botocore import xform_name

ROOT = Path(__file__).parents[2]
PACKAGE = "release"
# The local cloud: it runs against the sandbox only, never under a Kiln role.
SKIPPED_PACKAGES = ("release.sandbox",)

# Functions that hand out the client they are asked for (the service is their argument).
FACTORIES = {
    "release.aws.Aws.client": "returns a client for the service its caller names",
    "release.aws.client_factory": "(service, region) -> client, for the sandbox's provisioning only",
}
# `x.client` passed on uncalled: who calls AWS with it, and with which credentials.
CLIENT_FACTORY_REFERENCES = {
    "release.aws._RoleCredentials.__init__": "botocore's AssumeRoleCredentialFetcher calls sts:AssumeRole with the "
                                         "caller's own credentials, before the role is in effect",
}
# Attributes of a client that are not AWS calls.
NOT_CALLS = {"exceptions", "meta", "can_paginate", "close", "get_paginator"}
# A boto3 stub's module name -> botocore's service name (types_boto3_<x> / mypy_boto3_<x>).
_STUB_MODULE = re.compile(r"^(?:types_boto3|mypy_boto3)_(\w+?)(?:\.|$)")
IAM_PREFIX = {"elbv2": "elasticloadbalancing"}
# API operations authorized as other IAM actions: a DynamoDB transaction needs the action of each
# kind of item it holds (read from the call's TransactItems literal).
TRANSACTIONS = {"TransactWriteItems", "TransactGetItems"}
TRANSACTION_ITEMS = {"ConditionCheck": "ConditionCheckItem", "Put": "PutItem", "Update": "UpdateItem",
                     "Delete": "DeleteItem", "Get": "GetItem"}


class ScanError(AssertionError):
    """The scan met something it cannot classify."""


@functools.cache
def _service_names() -> frozenset[str]:
    return frozenset(botocore.session.get_session().get_available_services())


@functools.cache
def operations(service: str) -> dict[str, str]:
    """snake_case method name -> API operation name."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names}


@functools.cache
def _common_operation_names() -> frozenset[str]:
    """Method names that are operations of any of the services Kiln's clients could be: a call by
    such a name on something the scan cannot type might be an unclassified client call."""
    services = ("autoscaling", "cloudwatch", "dynamodb", "ec2", "elbv2", "iam", "kms", "s3", "secretsmanager",
                "ssm", "sts")
    generic = {"sign", "verify", "encrypt", "decrypt", "encapsulate", "decapsulate"}  # crypto verbs, not only KMS's
    return frozenset(name for s in services for name in operations(s)) - generic | {"get_paginator", "get_waiter"}


def iam_action(service: str, operation: str) -> str:
    return f"{IAM_PREFIX.get(service, service)}:{operation}"


# ------------------------------------------------------------------------------------------- types
# A type is a string: "release.cloud.Cloud" (an instance of a Kiln class), "client:ec2" (a boto3
# client), "seq:<type>" (a container or iterator of that type); and references: "module:<name>",
# "class:<qualname>", "func:<qualname>", "method:<qualname>" (a bound method), "methods:<q1>,<q2>"
# (a Protocol's method: its implementations), "method-of:<type>" (dict.values() and the like).


@dataclass
class Function:
    qualname: str
    module: Module
    node: ast.FunctionDef | ast.AsyncFunctionDef
    cls: Class | None = None

    @property
    def where(self) -> str:
        return f"{self.module.path.relative_to(ROOT)}:{self.node.lineno}"

    @property
    def decorators(self) -> set[str]:
        return {ast.unparse(d).split("(")[0].split(".")[-1] for d in self.node.decorator_list}


@dataclass
class Class:
    qualname: str
    module: Module
    node: ast.ClassDef
    methods: dict[str, Function] = field(default_factory=dict)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: dict[str, str] = field(default_factory=dict)  # local name -> qualified name
    functions: dict[str, Function] = field(default_factory=dict)
    classes: dict[str, Class] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One AWS API call in the source."""

    action: str  # IAM action, e.g. "ec2:CreateTags"
    where: str
    function: str


class Scan:
    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.modules: dict[str, Module] = {}
        self.errors: list[str] = []
        for path in sorted((root / PACKAGE).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            if not name.startswith(SKIPPED_PACKAGES):
                self._load(name, path, path.read_text())
        self._load("tasks", root / "tasks.py", (root / "tasks.py").read_text())  # the commands: the roots
        self.functions = {f.qualname: f for m in self.modules.values() for f in self._all_functions(m)}
        self.classes = {c.qualname: c for m in self.modules.values() for c in m.classes.values()}
        self._attr_cache: dict[tuple[str, str], str | None] = {}
        self._return_cache: dict[str, str | None] = {}
        self._busy: set[object] = set()
        self.calls: dict[str, set[Call]] = {}
        self.edges: dict[str, set[str]] = {}
        for function in self.functions.values():
            self._walk(function)

    # ---------------------------------------------------------------------------------- loading
    def add_source(self, name: str, source: str) -> None:
        """Scan one more module (tests of the scan itself)."""
        module = self._load(name, self.root / f"{name.replace('.', '/')}.py", source)
        for function in self._all_functions(module):
            self.functions[function.qualname] = function
        for cls in module.classes.values():
            self.classes[cls.qualname] = cls
        for function in self._all_functions(module):
            self._walk(function)

    def _load(self, name: str, path: Path, source: str) -> Module:
        module = Module(name, path, ast.parse(source, str(path)))
        package = name.rsplit(".", 1)[0] if "." in name else name
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x, from ..y import z
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = f"{base}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        module.imports[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        module.imports[top] = top
        top_level = [n for n in module.tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                         ast.ClassDef))]
        code = ast.FunctionDef(name="<module>", args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[],
                                                                     kw_defaults=[], defaults=[]),
                               body=top_level or [ast.Pass()], decorator_list=[], lineno=1)
        module.functions["<module>"] = Function(f"{name}.<module>", module, code)  # runs on import
        for node in module.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                module.functions[node.name] = Function(f"{name}.{node.name}", module, node)
            elif isinstance(node, ast.ClassDef):
                cls = Class(f"{name}.{node.name}", module, node)
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        cls.methods[item.name] = Function(f"{cls.qualname}.{item.name}", module, item, cls)
                module.classes[node.name] = cls
        self.modules[name] = module
        return module

    @staticmethod
    def _all_functions(module: Module) -> Iterator[Function]:
        yield from module.functions.values()
        for cls in module.classes.values():
            yield from cls.methods.values()

    # ---------------------------------------------------------------------------------- naming
    def resolve_name(self, module: Module, name: str) -> str | None:
        """A module-level name as a type reference: "class:…", "func:…", "module:…", a stub client."""
        if name in module.classes:
            return f"class:{module.classes[name].qualname}"
        if name in module.functions:
            return f"func:{module.functions[name].qualname}"
        target = module.imports.get(name)
        if target is None:
            return None
        return self._resolve_qualified(target)

    def _resolve_qualified(self, target: str) -> str | None:
        if target in self.modules:
            return f"module:{target}"
        if target in self.classes:
            return f"class:{target}"
        if target in self.functions:
            return f"func:{target}"
        stub = _STUB_MODULE.match(target)
        if stub and target.endswith("Client"):
            return f"client:{self._stub_service(stub.group(1), target)}"
        return None

    def _stub_service(self, raw: str, target: str) -> str:
        for candidate in (raw, raw.replace("_", "-")):
            if candidate in _service_names():
                return candidate
        self.errors.append(f"{target}: a boto3 stub client type whose service the scan cannot tell")
        return "?"

    # ---------------------------------------------------------------------------------- typing
    def annotation(self, module: Module, node: ast.expr | None) -> str | None:
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                return self.annotation(module, ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.annotation(module, node.left) or self.annotation(module, node.right)
        if isinstance(node, ast.Name):
            ref = self.resolve_name(module, node.id)
            return self._instance_of(ref)
        if isinstance(node, ast.Attribute):
            ref = self._reference(module, node)
            return self._instance_of(ref)
        if isinstance(node, ast.Subscript):
            base = ast.unparse(node.value).split(".")[-1]
            args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if base == "Optional":
                return self.annotation(module, args[0])
            if base in ("list", "List", "Sequence", "Iterable", "Iterator", "Generator", "set", "frozenset",
                        "tuple", "AbstractSet", "Collection"):
                item = self.annotation(module, args[0])
                return f"seq:{item}" if item else None
            if base in ("dict", "Dict", "Mapping", "MutableMapping") and len(args) == 2:
                item = self.annotation(module, args[1])
                return f"seq:{item}" if item else None
        return None

    @staticmethod
    def _instance_of(ref: str | None) -> str | None:
        if ref is None:
            return None
        if ref.startswith("class:"):
            return ref.removeprefix("class:")
        if ref.startswith("client:"):
            return ref
        return None

    def _reference(self, module: Module, node: ast.Attribute) -> str | None:
        if isinstance(node.value, ast.Name):
            base = self.resolve_name(module, node.value.id)
            if base and base.startswith("module:"):
                return self._resolve_qualified(f"{base.removeprefix('module:')}.{node.attr}")
        return None

    def implementations(self, cls_name: str) -> list[str]:
        """A Protocol's implementations in the scanned code (every class with all its methods); any
        other class stands for itself."""
        cls = self.classes.get(cls_name)
        if cls is None or not any(ast.unparse(b).split(".")[-1] == "Protocol" for b in cls.node.bases):
            return [cls_name]
        wanted = set(cls.methods)
        return sorted(c.qualname for c in self.classes.values()
                      if c is not cls and wanted <= set(c.methods)
                      and not any(ast.unparse(b).split(".")[-1] == "Protocol" for b in c.node.bases))

    def method(self, cls_name: str, name: str) -> Function | None:
        cls = self.classes.get(cls_name)
        if cls is None:
            return None
        if name in cls.methods:
            return cls.methods[name]
        for base in cls.node.bases:
            ref = self.annotation(cls.module, base)
            if ref and ref in self.classes:
                found = self.method(ref, name)
                if found:
                    return found
        return None

    def returns(self, function: Function) -> str | None:
        """What calling `function` gives: its annotation, else what its return statements give."""
        key = function.qualname
        if key in self._return_cache:
            return self._return_cache[key]
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            found = self.annotation(function.module, function.node.returns)
            if found is None:
                scope = Scope(self, function)
                for node in ast.walk(function.node):
                    if isinstance(node, ast.Return) and node.value is not None:
                        found = scope.type_of(node.value)
                        if found:
                            break
        finally:
            self._busy.discard(key)
        self._return_cache[key] = found
        return found

    def attribute(self, cls_name: str, name: str) -> str | None:
        """The type of `instance.name` for an instance of the class."""
        key = (cls_name, name)
        if key in self._attr_cache:
            return self._attr_cache[key]
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            found = self._attribute(cls_name, name)
        finally:
            self._busy.discard(key)
        self._attr_cache[key] = found
        return found

    def _attribute(self, cls_name: str, name: str) -> str | None:
        cls = self.classes.get(cls_name)
        if cls is None:
            return None
        method = self.method(cls_name, name)
        if method is not None:
            if method.decorators & {"property", "cached_property"}:
                return self.returns(method)
            implementations = self.implementations(cls_name)
            if implementations != [cls_name]:
                return "methods:" + ",".join(f"{c}.{name}" for c in implementations if self.method(c, name))
            return f"method:{method.qualname}"
        for item in cls.node.body:  # dataclass fields and class-level annotations
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == name:
                return self.annotation(cls.module, item.annotation)
        for method in cls.methods.values():  # self.name = ... in any method
            scope: Scope | None = None
            for node in ast.walk(method.node):
                targets: list[ast.expr] = []
                value: ast.expr | None = None
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, ast.AnnAssign):
                    targets, value = [node.target], node.value
                    if _is_self_attr(node.target, name):
                        typed = self.annotation(cls.module, node.annotation)
                        if typed:
                            return typed
                for target in targets:
                    if _is_self_attr(target, name) and value is not None:
                        scope = scope or Scope(self, method)
                        typed = scope.type_of(value)
                        if typed:
                            return typed
        for base in cls.node.bases:
            ref = self.annotation(cls.module, base)
            if ref and ref in self.classes:
                found = self.attribute(ref, name)
                if found:
                    return found
        return None

    # ---------------------------------------------------------------------------------- calls
    def _walk(self, function: Function) -> None:
        scope = Scope(self, function)
        calls = self.calls.setdefault(function.qualname, set())
        edges = self.edges.setdefault(function.qualname, set())
        where = function.module.path.relative_to(self.root) if function.module.path.is_relative_to(self.root) \
            else function.module.path
        for node in ast.walk(function.node):
            line = f"{where}:{getattr(node, 'lineno', function.node.lineno)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "client":
                self._check_factory_call(function, node, scope, line)
            if isinstance(node, ast.Attribute) and node.attr == "client" and not _is_called(function.node, node) \
                    and not _is_attribute_base(function.node, node) \
                    and function.qualname not in {**CLIENT_FACTORY_REFERENCES, **FACTORIES}:
                self.errors.append(f"{line}: {ast.unparse(node)} is handed on uncalled: which service, "
                                   "with which credentials? (CLIENT_FACTORY_REFERENCES)")
            if isinstance(node, ast.Call):
                self._call(function, node, scope, line, calls, edges)
            if isinstance(node, (ast.Attribute, ast.Name)):
                ref = scope.type_of(node)
                if ref and ref.startswith("method:"):
                    edges.add(ref.removeprefix("method:"))
                elif ref and ref.startswith("methods:"):
                    edges.update(self.method(*m.rsplit(".", 1)).qualname  # type: ignore[union-attr]
                                 for m in ref.removeprefix("methods:").split(","))
                elif ref and ref.startswith("func:"):
                    edges.add(ref.removeprefix("func:"))
                elif ref and ref.startswith("class:"):
                    init = self.method(ref.removeprefix("class:"), "__init__")
                    if init:
                        edges.add(init.qualname)

    def _check_factory_call(self, function: Function, node: ast.Call, scope: Scope, line: str) -> None:
        receiver = scope.type_of(node.func.value)  # type: ignore[attr-defined]
        if receiver and receiver.startswith("client:"):
            return  # not a factory: an operation named `client` would be caught as unknown
        service = _service_argument(node)
        if service is None and function.qualname not in FACTORIES:
            self.errors.append(f"{line}: {ast.unparse(node)} makes a client whose service the scan cannot tell "
                               "(name it with a string literal, or list the function in FACTORIES)")

    def _call(self, function: Function, node: ast.Call, scope: Scope, line: str, calls: set[Call],
              edges: set[str]) -> None:
        callee = node.func
        if not isinstance(callee, ast.Attribute):
            return  # f(...): the Name/Attribute walk above already made the edge
        receiver = scope.type_of(callee.value)
        name = callee.attr
        if receiver is not None and receiver.startswith("client:"):
            service = receiver.removeprefix("client:")
            if name == "get_paginator":
                if not (node.args and isinstance(node.args[0], ast.Constant)):
                    self.errors.append(f"{line}: a paginator whose operation the scan cannot tell")
                    return
                name = str(node.args[0].value)
            elif name == "get_waiter":
                self.errors.append(f"{line}: waiters call operations the scan cannot see; poll explicitly")
                return
            elif name in NOT_CALLS:
                return
            if service == "?":
                self.errors.append(f"{line}: {ast.unparse(callee)}(): a client of an unknown service")
                return
            operation = operations(service).get(name)
            if operation is None:
                self.errors.append(f"{line}: {ast.unparse(callee)}() is not a {service} operation")
                return
            if service == "dynamodb" and operation in TRANSACTIONS:
                kinds = _transaction_kinds(node)
                if kinds is None:
                    self.errors.append(f"{line}: {operation} whose TransactItems the scan cannot read (write "
                                       "them as a list literal of one-key dicts)")
                for kind in kinds or ():
                    calls.add(Call(iam_action(service, TRANSACTION_ITEMS[kind]), line, function.qualname))
                return
            calls.add(Call(iam_action(service, operation), line, function.qualname))
            return
        if receiver is None and name in _common_operation_names():
            self.errors.append(f"{line}: {ast.unparse(callee)}() looks like an AWS call, on something whose "
                               "type the scan cannot tell: annotate it (a Kiln class or a boto3 stub client)")

    # ---------------------------------------------------------------------------------- results
    def check(self) -> None:
        if self.errors:
            raise ScanError("\n".join(self.errors))

    def reachable(self, roots: set[str]) -> set[str]:
        seen: set[str] = set()
        todo = [r for r in roots]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo += [e for e in self.edges.get(name, ()) if e not in seen]
        return seen

    def actions(self, roots: set[str]) -> dict[str, set[Call]]:
        """IAM action -> the calls that need it, for everything the roots reach."""
        out: dict[str, set[Call]] = {}
        for name in self.reachable(roots):
            for call in self.calls.get(name, ()):
                out.setdefault(call.action, set()).add(call)
        return out


class Scope:
    """The types of names inside one function (its parameters, locals, and closures' names)."""

    def __init__(self, scan: Scan, function: Function) -> None:
        self.scan = scan
        self.function = function
        self.module = function.module
        self.names: dict[str, str] = {}
        args = function.node.args
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        if function.cls is not None and params and "staticmethod" not in function.decorators:
            self.names[params[0].arg] = function.cls.qualname
            params = params[1:]
        for node in ast.walk(function.node):  # nested functions' parameters too
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node is not function.node:
                params += [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        for param in params:
            typed = scan.annotation(self.module, param.annotation)
            if typed:
                self.names[param.arg] = typed
        for node in ast.walk(function.node):  # an import inside a function (a lazy one) binds what it imports
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    name = (alias.asname or alias.name).split(".")[0]
                    imported = scan.resolve_name(self.module, name)
                    if imported:
                        self.names[name] = imported
        self.local = {p.arg for p in params} | set(self.names) | _bound_names(function.node)
        for _ in range(3):  # locals typed from other locals: a few passes settle them
            if not self._assign_pass():
                break

    def _assign_pass(self) -> bool:
        changed = False

        def bind(target: ast.expr, typed: str | None) -> None:
            nonlocal changed
            if typed and isinstance(target, ast.Name) and self.names.get(target.id) != typed:
                self.names[target.id] = typed
                changed = True

        for node in ast.walk(self.function.node):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        for t, v in zip(target.elts, node.value.elts, strict=False):
                            bind(t, self.type_of(v))
                    else:
                        bind(target, self.type_of(node.value))
            elif isinstance(node, ast.AnnAssign):
                bind(node.target, self.scan.annotation(self.module, node.annotation)
                     or (self.type_of(node.value) if node.value else None))
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                bind(node.target, _item(self.type_of(node.iter)))
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        bind(item.optional_vars, self._entered(item.context_expr))
        return changed

    def _entered(self, expr: ast.expr) -> str | None:
        """What `with expr as x` binds x to."""
        if isinstance(expr, ast.Call):
            callee = self.type_of(expr.func)
            function = self._function_of(callee)
            if function is not None and "contextmanager" in function.decorators:
                return _item(self.scan.returns(function))
        typed = self.type_of(expr)
        if typed in self.scan.classes:
            enter = self.scan.method(typed, "__enter__")
            return self.scan.returns(enter) if enter else typed
        return None

    def _function_of(self, ref: str | None) -> Function | None:
        if ref and ref.startswith(("method:", "func:")):
            return self.scan.functions.get(ref.split(":", 1)[1])
        if ref and ref.startswith("methods:"):  # a Protocol's method: its implementations agree on types
            first = ref.removeprefix("methods:").split(",")[0]
            return self.scan.method(*first.rsplit(".", 1)) if first else None
        return None

    def type_of(self, node: ast.expr | None) -> str | None:
        scan = self.scan
        if node is None:
            return None
        if isinstance(node, ast.Name):
            if node.id in self.local:  # a local shadows the module's name, typed or not
                return self.names.get(node.id)
            return scan.resolve_name(self.module, node.id)
        if isinstance(node, ast.Attribute):
            base = self.type_of(node.value)
            if base is None:
                return None
            if base.startswith("module:"):
                return scan._resolve_qualified(f"{base.removeprefix('module:')}.{node.attr}")
            if base in scan.classes:
                return scan.attribute(base, node.attr)
            if base.startswith("seq:") and node.attr in ("values", "copy"):
                return f"method-of:{base}"
            return None
        if isinstance(node, ast.Call):
            return self._call_type(node)
        if isinstance(node, ast.Subscript):
            return _item(self.type_of(node.value))
        if isinstance(node, ast.IfExp):
            return self.type_of(node.body) or self.type_of(node.orelse)
        if isinstance(node, ast.BoolOp):
            return next((t for t in map(self.type_of, node.values) if t), None)
        if isinstance(node, (ast.Await, ast.NamedExpr)):
            return self.type_of(node.value)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            item = self.type_of(node.elt)
            return f"seq:{item}" if item else None
        if isinstance(node, ast.DictComp):
            item = self.type_of(node.value)
            return f"seq:{item}" if item else None
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and node.elts:
            item = self.type_of(node.elts[0])
            return f"seq:{item}" if item else None
        return None

    def _call_type(self, node: ast.Call) -> str | None:
        scan = self.scan
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "client":
            receiver = self.type_of(func.value)
            if not (receiver and receiver.startswith("client:")):
                service = _service_argument(node)
                if service is not None:
                    return f"client:{service}"
                if self.function.qualname in FACTORIES:
                    return None
                return "client:?"
        if isinstance(func, ast.Name) and func.id == "cast" and len(node.args) == 2:
            return scan.annotation(self.module, node.args[0]) or self.type_of(node.args[1])
        callee = self.type_of(func)
        if callee is None:
            return None
        if callee.startswith("class:"):
            return callee.removeprefix("class:")
        if callee.startswith("method-of:"):
            return callee.removeprefix("method-of:")
        function = self._function_of(callee)
        if function is not None:
            return scan.returns(function)
        return None


def _bound_names(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names a function binds (assignments, loops, with, imports, nested definitions, arguments)."""
    out: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not function:
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
    return out


def _item(typed: str | None) -> str | None:
    return typed.removeprefix("seq:") if typed and typed.startswith("seq:") else None


def _is_self_attr(node: ast.expr, name: str) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.value, ast.Name)
            and node.value.id == "self")


def _is_called(tree: ast.AST, attribute: ast.Attribute) -> bool:
    return any(isinstance(n, ast.Call) and n.func is attribute for n in ast.walk(tree))


def _transaction_kinds(node: ast.Call) -> set[str] | None:
    items = next((k.value for k in node.keywords if k.arg == "TransactItems"), None)
    if not isinstance(items, ast.List):
        return None
    kinds = set()
    for item in items.elts:
        if not (isinstance(item, ast.Dict) and len(item.keys) == 1 and isinstance(item.keys[0], ast.Constant)
                and item.keys[0].value in TRANSACTION_ITEMS):
            return None
        kinds.add(str(item.keys[0].value))
    return kinds


def _is_attribute_base(tree: ast.AST, attribute: ast.Attribute) -> bool:
    """`http.client` in `http.client.HTTPConnection`: a module path, not a client factory."""
    return any(isinstance(n, ast.Attribute) and n.value is attribute for n in ast.walk(tree))


def _service_argument(node: ast.Call) -> str | None:
    arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "service_name"), None)
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


# ------------------------------------------------------------------------------------------- roots


def tasks(scan: Scan) -> dict[str, str]:
    """Every invoke task in tasks.py ("tasks.<function>") -> its namespace ("" for the root one)."""
    module = scan.modules["tasks"]
    names = {f.node.name: f.qualname for f in module.functions.values()
             if any("task" in ast.unparse(d) for d in f.node.decorator_list)}
    namespace = {qualname: "" for qualname in names.values()}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "Collection" and node.args \
                and isinstance(node.args[0], ast.Constant):
            for arg in node.args[1:]:
                if isinstance(arg, ast.Name) and arg.id in names:
                    namespace[names[arg.id]] = str(node.args[0].value)
    return namespace
