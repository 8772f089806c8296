"""Grammars, regexes and sample strings shared by the grammar-engine tests and benchmarks."""

from __future__ import annotations

JSON = r"""
?start: value
?value: object | array | string | SIGNED_NUMBER | "true" | "false" | "null"
array  : "[" [value ("," value)*] "]"
object : "{" [pair ("," pair)*] "}"
pair   : string ":" value
string : ESCAPED_STRING
%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
"""

ARITHMETIC = r"""
?start: sum
?sum: product | sum "+" product | sum "-" product
?product: atom | product "*" atom | product "/" atom
?atom: NUMBER | "-" atom | "(" sum ")" | NAME
%import common.NUMBER
%import common.CNAME -> NAME
%import common.WS_INLINE
%ignore WS_INLINE
"""

SQL = r"""
start: select
select: "SELECT"i columns "FROM"i NAME where? ";"?
columns: "*" | NAME ("," NAME)*
where: "WHERE"i cond (("AND"i | "OR"i) cond)*
cond: NAME OP value
OP: "=" | "<" | ">" | "<=" | ">=" | "!="
value: NUMBER | STRING
STRING: /'[^']*'/
%import common.CNAME -> NAME
%import common (NUMBER, WS)
%ignore WS
"""

C_LIKE = r"""
start: function+
function: type NAME "(" [param ("," param)*] ")" block
param: type NAME
type: "int" | "void" | "char" | "float"
block: "{" statement* "}"
statement: type NAME ["=" expr] ";"
         | NAME "=" expr ";"
         | "return" [expr] ";"
         | "if" "(" expr ")" statement ["else" statement]
         | "while" "(" expr ")" statement
         | block
         | expr ";"
?expr: expr OPERATOR atom | atom
OPERATOR: "+" | "-" | "*" | "/" | "<" | ">" | "=="
atom: NUMBER | NAME | NAME "(" [expr ("," expr)*] ")" | "(" expr ")"
%import common.CNAME -> NAME
%import common.INT -> NUMBER
%import common (WS, CPP_COMMENT, C_COMMENT)
%ignore WS
%ignore CPP_COMMENT
%ignore C_COMMENT
"""

AMBIGUOUS = r"""
start: e | alt
e: e "+" e | e "*" e | "(" e ")" | NUMBER
alt: "x" "y"+ | "x" "y" "z"?
%import common.NUMBER
"""

CASES: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (grammar, valid strings, invalid strings)
    "json": (
        JSON,
        [
            '{"name": "Alice", "age": 42, "tags": ["a", "b"], "ok": true, "x": null}',
            '[1, -2.5e3, "caf\\u00e9 \\"q\\"", {"nested": [[], {}]}]',
            '"plain string with unicode: h\u00e9llo \u4e16\u754c \U0001f916"',
            "  3.14159  ",
            '{"a":{"b":{"c":[true,false,null]}}}',
        ],
        ['{"a": 1,}', "[1 2]", '{"a" 1}', "tru", '"unterminated', "01x", "{", '{"a": 1}}'],
    ),
    "arithmetic": (
        ARITHMETIC,
        ["1 + 2 * (3 - x)", "-(-a1)/ 4.5", "((1))", "foo_bar*2-3"],
        ["1 +", "(1", "1 2", "* 3", "a +* b"],
    ),
    "sql": (
        SQL,
        [
            "SELECT * FROM users;",
            "select id, name from users where age >= 18 and name = 'Bob'",
            "SELECT a FROM t WHERE b != 'x y' OR c < 3;",
        ],
        ["SELECT FROM t", "SELECT * users", "SELECT a FROM t WHERE", "SELECT a, FROM t"],
    ),
    "c_like": (
        C_LIKE,
        [
            "int main() { int x = 1; while (x < 10) x = x + 1; return x; }",
            "void f(int a, char b) { // comment\n if (a) { g(a, b); } else return; }",
            "float g() { /* block\n comment */ return 1 * 2; } int h(){}",
        ],
        ["int main() { return 1 }", "int () {}", "main() {}", "int f() { x = ; }"],
    ),
    "ambiguous": (AMBIGUOUS, ["1+2*3", "(1+2)*3+4", "xyyy", "xyz", "xy"], ["1+", "xz", "xyzz", "x"]),
}

REGEXES: dict[str, tuple[str, list[str], list[str]]] = {
    "date": (r"\d{4}-\d{2}-\d{2}", ["2024-01-31", "0000-00-00"], ["2024-1-31", "2024-01-311", ""]),
    "email": (
        r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
        ["john.doe+x@example.co.uk", "a@b.cd"],
        ["@example.com", "a@b", "a b@c.de"],
    ),
    "number": (r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", ["0", "-12.5e+3", "7"], ["01", "1.", "-", "1e"]),
    "alternation": (r"(cat|dog|bird)s? (and|or) (fish|mice)", ["cats and fish", "bird or mice"], ["cat and", "cow or fish"]),
    "unicode": (
        r"[\u00C0-\u017F]+|[\u4e00-\u9fff]{1,3}|\U0001F600+",
        ["\u00e9\u00e8\u0161", "\u4e16\u754c", "\U0001f600\U0001f600"],
        ["e", "\u4e16\u754c\u4e16\u754c", "\u00e9\u4e16"],
    ),
    "case_insensitive": (r"(?i)hello (world|there)", ["HeLLo World", "hello there"], ["hello  world", "helo world"]),
}
