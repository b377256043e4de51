from pylb.model import Backend, HttpRoute, RouteTable, Server


def test_table_sorts_routes_longest_prefix_first() -> None:
    b = Backend("default/a:80", (Server("10.0.0.1", 80),))
    t = RouteTable(http=(HttpRoute("a", "/a", b.name), HttpRoute("ab", "/a/b", b.name)),
                   backends=(b,))
    assert [r.prefix for r in t.http] == ["/a/b", "/a"]
