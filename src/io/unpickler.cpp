#include "io/unpickler.hpp"

#include <cstdio>

#include "diffprobe/core/error.hpp"
#include "io/bytes.hpp"

namespace diffprobe::io::detail {

std::string describe(const PyValue& v) {
  switch (v.kind) {
    case PyKind::None: return "None";
    case PyKind::Bool: return v.b ? "True" : "False";
    case PyKind::Int: return "int " + std::to_string(v.i);
    case PyKind::BigInt: return "a " + std::to_string(v.str.size()) + "-byte integer";
    case PyKind::Float: return "float " + std::to_string(v.f);
    case PyKind::Str: return "str '" + (v.str.size() > 60 ? v.str.substr(0, 60) + "..." : v.str) + "'";
    case PyKind::Bytes: return "bytes of length " + std::to_string(v.str.size());
    case PyKind::Tuple: return "tuple of " + std::to_string(v.items.size());
    case PyKind::List: return "list of " + std::to_string(v.items.size());
    case PyKind::Dict: return "dict of " + std::to_string(v.entries.size());
    case PyKind::Global: return "global " + v.qualified_name();
    case PyKind::Object: return v.str;
  }
  return "?";
}

const PyValue* PyValue::find(const std::string& key) const {
  if (kind != PyKind::Dict || !key_index) return nullptr;
  std::string k(1, 's');
  k += key;
  const auto it = key_index->find(k);
  return it == key_index->end() ? nullptr : entries[it->second].second.get();
}

PyPtr make_dict() {
  auto v = std::make_shared<PyValue>();
  v->kind = PyKind::Dict;
  v->depth = 1;
  return v;
}

PyPtr make_object(const std::string& type, std::int64_t handle) {
  auto v = std::make_shared<PyValue>();
  v->kind = PyKind::Object;
  v->str = type;
  v->i = handle;
  return v;
}

namespace {

// Dict keys we can look up: str and int (the only kinds a state dict uses).
bool dict_key(const PyValue& k, std::string& out) {
  if (k.kind == PyKind::Str) {
    out.assign(1, 's');  // (not "s" + str: GCC 12 warns falsely about that)
    out += k.str;
    return true;
  }
  if (k.kind == PyKind::Int) {
    out.assign(1, 'i');
    out += std::to_string(k.i);
    return true;
  }
  return false;
}

class Unpickler {
 public:
  Unpickler(std::span<const std::uint8_t> data, std::size_t pos, const UnpicklerHooks& hooks,
            const std::string& where, const PickleLimits& limits)
      : d_(data), pos_(pos), hooks_(hooks), where_(where), lim_(limits) {}

  std::pair<PyPtr, std::size_t> run();

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw FormatError(where_, "pickle at offset " + std::to_string(op_pos_) + ": " + why);
  }
  const std::uint8_t* take(std::uint64_t n) {
    if (n > d_.size() - pos_) fail("truncated (needs " + std::to_string(n) + " more bytes)");
    const std::uint8_t* p = d_.data() + pos_;
    pos_ += static_cast<std::size_t>(n);
    return p;
  }
  template <class T> T take_le() { return load_le<T>(take(sizeof(T))); }
  std::string take_line() {
    const std::size_t start = pos_;
    while (pos_ < d_.size() && d_[pos_] != '\n') {
      if (pos_ - start > 256) fail("GLOBAL name longer than 256 bytes");
      ++pos_;
    }
    if (pos_ >= d_.size()) fail("truncated GLOBAL name");
    std::string s(reinterpret_cast<const char*>(d_.data() + start), pos_ - start);
    ++pos_;
    return s;
  }

  PyPtr make(PyKind k) {
    if (++created_ > lim_.max_objects) fail("more than " + std::to_string(lim_.max_objects) + " objects");
    auto v = std::make_shared<PyValue>();
    v->kind = k;
    return v;
  }
  void push(PyPtr v) {
    if (stack_.size() >= lim_.max_objects) fail("stack deeper than " + std::to_string(lim_.max_objects));
    stack_.push_back(std::move(v));
  }
  std::size_t frame_base() const { return marks_.empty() ? 0 : marks_.back(); }
  PyPtr pop() {
    if (stack_.size() <= frame_base()) fail("stack underflow");
    PyPtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PyPtr& top() {
    if (stack_.size() <= frame_base()) fail("stack underflow");
    return stack_.back();
  }
  // Items since the last MARK, which is removed.
  std::vector<PyPtr> pop_mark() {
    if (marks_.empty()) fail("MARK expected but missing");
    const std::size_t base = marks_.back();
    marks_.pop_back();
    std::vector<PyPtr> items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(base)),
                             std::make_move_iterator(stack_.end()));
    stack_.resize(base);
    return items;
  }
  // Records that `child` now lives inside `parent` (whose depth grows accordingly).
  void adopt(PyValue& parent, PyValue& child) {
    if (&parent == &child) fail("a container cannot contain itself");
    child.frozen = true;
    if (child.depth + 1 > parent.depth) parent.depth = child.depth + 1;
    if (parent.depth > lim_.max_depth) fail("nesting deeper than " + std::to_string(lim_.max_depth));
  }
  PyPtr make_tuple(std::vector<PyPtr> items) {
    PyPtr t = make(PyKind::Tuple);
    t->depth = 1;
    for (auto& it : items) adopt(*t, *it);
    t->items = std::move(items);
    return t;
  }
  PyValue& mutable_target(PyPtr& v, PyKind kind, const char* op) {
    if (v->kind != kind) fail(std::string(op) + " on " + describe(*v));
    if (v->frozen) fail(std::string(op) + " on a container that is already inside another one");
    return *v;
  }
  void append(PyValue& list, PyPtr item) {
    adopt(list, *item);
    if (list.items.size() >= lim_.max_objects) fail("list too long");
    list.items.push_back(std::move(item));
  }
  void setitem(PyValue& dict, PyPtr k, PyPtr v) {
    adopt(dict, *k);
    adopt(dict, *v);
    std::string key;
    if (dict_key(*k, key)) {
      if (!dict.key_index) dict.key_index = std::make_unique<std::unordered_map<std::string, std::size_t>>();
      const auto [it, fresh] = dict.key_index->emplace(key, dict.entries.size());
      if (!fresh) {
        dict.entries[it->second].second = std::move(v);
        return;
      }
    }
    dict.entries.emplace_back(std::move(k), std::move(v));
  }
  void memo_put(std::uint64_t idx) {
    if (memo_.size() >= lim_.max_objects && !memo_.count(idx)) fail("memo too large");
    memo_[idx] = top();
  }
  void memo_get(std::uint64_t idx) {
    const auto it = memo_.find(idx);
    if (it == memo_.end()) fail("memo index " + std::to_string(idx) + " was never stored");
    push(it->second);
  }
  PyPtr str_value(PyKind kind, std::uint64_t len) {
    const std::uint8_t* p = take(len);
    PyPtr v = make(kind);
    v->str.assign(reinterpret_cast<const char*>(p), static_cast<std::size_t>(len));
    return v;
  }
  PyPtr long_value(std::uint64_t n) {
    const std::uint8_t* p = take(n);
    PyPtr v = make(PyKind::Int);
    if (n == 0) return v;
    // Fits in int64 when every byte past the 8th is the sign extension of byte 7.
    const std::uint8_t ext = (p[std::min<std::uint64_t>(n, 8) - 1] & 0x80) ? 0xff : 0x00;
    bool fits = true;
    for (std::uint64_t k = 8; k < n; ++k) fits = fits && p[k] == ext;
    if (!fits) {
      v->kind = PyKind::BigInt;
      v->str.assign(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
      return v;
    }
    std::uint64_t u = 0;
    for (std::uint64_t k = 0; k < 8; ++k) u |= std::uint64_t{k < n ? p[k] : ext} << (8 * k);
    v->i = static_cast<std::int64_t>(u);
    return v;
  }
  void global(std::string module, std::string name) {
    if (!hooks_.allow_global || !hooks_.allow_global(module, name))
      fail("refusing to load the global '" + module + "." + name +
           "': a checkpoint may only reference collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
           "torch._utils._rebuild_parameter and torch.*Storage");
    PyPtr g = make(PyKind::Global);
    g->str = std::move(module);
    g->name = std::move(name);
    push(std::move(g));
  }

  std::span<const std::uint8_t> d_;
  std::size_t pos_;
  std::size_t op_pos_ = 0;
  const UnpicklerHooks& hooks_;
  const std::string& where_;
  PickleLimits lim_;
  std::vector<PyPtr> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, PyPtr> memo_;
  std::size_t created_ = 0;
};

std::pair<PyPtr, std::size_t> Unpickler::run() {
  if (pos_ > d_.size()) fail("starts past the end of the data");
  for (;;) {
    op_pos_ = pos_;
    const std::uint8_t op = *take(1);
    switch (op) {
      case 0x80: {  // PROTO
        const std::uint8_t proto = *take(1);
        if (proto < 2 || proto > 5) fail("unsupported pickle protocol " + std::to_string(proto));
        break;
      }
      case 0x95: take_le<std::uint64_t>(); break;  // FRAME: a length hint only
      case '.': {                                  // STOP
        if (!marks_.empty() || stack_.size() != 1)
          fail("STOP with " + std::to_string(stack_.size()) + " values on the stack");
        return {std::move(stack_.back()), pos_};
      }
      case '(':
        if (marks_.size() >= lim_.max_objects) fail("too many MARKs");
        marks_.push_back(stack_.size());
        break;
      case '0': pop(); break;        // POP
      case '1': pop_mark(); break;   // POP_MARK
      case '2': push(top()); break;  // DUP
      case 'N': push(make(PyKind::None)); break;
      case 0x88:
      case 0x89: {  // NEWTRUE, NEWFALSE
        PyPtr v = make(PyKind::Bool);
        v->b = op == 0x88;
        push(std::move(v));
        break;
      }
      case 'J': {  // BININT
        PyPtr v = make(PyKind::Int);
        v->i = take_le<std::int32_t>();
        push(std::move(v));
        break;
      }
      case 'K': {  // BININT1
        PyPtr v = make(PyKind::Int);
        v->i = *take(1);
        push(std::move(v));
        break;
      }
      case 'M': {  // BININT2
        PyPtr v = make(PyKind::Int);
        v->i = take_le<std::uint16_t>();
        push(std::move(v));
        break;
      }
      case 0x8a: push(long_value(*take(1))); break;  // LONG1
      case 0x8b: {                                   // LONG4
        const std::int32_t n = take_le<std::int32_t>();
        if (n < 0) fail("negative LONG4 length");
        push(long_value(static_cast<std::uint64_t>(n)));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian
        const std::uint64_t u = load_be<std::uint64_t>(take(8));
        PyPtr v = make(PyKind::Float);
        std::memcpy(&v->f, &u, 8);
        push(std::move(v));
        break;
      }
      case 'X': push(str_value(PyKind::Str, take_le<std::uint32_t>())); break;   // BINUNICODE
      case 0x8c: push(str_value(PyKind::Str, *take(1))); break;                  // SHORT_BINUNICODE
      case 0x8d: push(str_value(PyKind::Str, take_le<std::uint64_t>())); break;  // BINUNICODE8
      case 'U': push(str_value(PyKind::Str, *take(1))); break;                   // SHORT_BINSTRING
      case 'T': {                                                                // BINSTRING
        const std::int32_t n = take_le<std::int32_t>();
        if (n < 0) fail("negative BINSTRING length");
        push(str_value(PyKind::Str, static_cast<std::uint64_t>(n)));
        break;
      }
      case 'C': push(str_value(PyKind::Bytes, *take(1))); break;                   // SHORT_BINBYTES
      case 'B': push(str_value(PyKind::Bytes, take_le<std::uint32_t>())); break;   // BINBYTES
      case 0x8e: push(str_value(PyKind::Bytes, take_le<std::uint64_t>())); break;  // BINBYTES8
      case ')': push(make_tuple({})); break;                                       // EMPTY_TUPLE
      case 't': push(make_tuple(pop_mark())); break;                               // TUPLE
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        std::vector<PyPtr> items(static_cast<std::size_t>(op - 0x84));
        for (std::size_t k = items.size(); k-- > 0;) items[k] = pop();
        push(make_tuple(std::move(items)));
        break;
      }
      case ']': {  // EMPTY_LIST
        PyPtr l = make(PyKind::List);
        l->depth = 1;
        push(std::move(l));
        break;
      }
      case 'l': {  // LIST
        std::vector<PyPtr> items = pop_mark();
        PyPtr l = make(PyKind::List);
        l->depth = 1;
        for (auto& it : items) append(*l, std::move(it));
        push(std::move(l));
        break;
      }
      case 'a': {  // APPEND
        PyPtr item = pop();
        append(mutable_target(top(), PyKind::List, "APPEND"), std::move(item));
        break;
      }
      case 'e': {  // APPENDS
        std::vector<PyPtr> items = pop_mark();
        PyValue& l = mutable_target(top(), PyKind::List, "APPENDS");
        for (auto& it : items) append(l, std::move(it));
        break;
      }
      case '}':  // EMPTY_DICT
        if (++created_ > lim_.max_objects) fail("too many objects");
        push(make_dict());
        break;
      case 'd': {  // DICT
        std::vector<PyPtr> items = pop_mark();
        if (items.size() % 2) fail("DICT with an odd number of items");
        if (++created_ > lim_.max_objects) fail("too many objects");
        PyPtr dct = make_dict();
        for (std::size_t k = 0; k < items.size(); k += 2) setitem(*dct, items[k], items[k + 1]);
        push(std::move(dct));
        break;
      }
      case 's': {  // SETITEM
        PyPtr v = pop();
        PyPtr k = pop();
        setitem(mutable_target(top(), PyKind::Dict, "SETITEM"), std::move(k), std::move(v));
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<PyPtr> items = pop_mark();
        if (items.size() % 2) fail("SETITEMS with an odd number of items");
        PyValue& dct = mutable_target(top(), PyKind::Dict, "SETITEMS");
        for (std::size_t k = 0; k < items.size(); k += 2) setitem(dct, items[k], items[k + 1]);
        break;
      }
      case 'c': {  // GLOBAL
        std::string module = take_line();
        std::string name = take_line();
        global(std::move(module), std::move(name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        PyPtr name = pop();
        PyPtr module = pop();
        if (!module->is_str() || !name->is_str()) fail("STACK_GLOBAL needs two strings");
        global(module->str, name->str);
        break;
      }
      case 'R': {  // REDUCE
        PyPtr args = pop();
        PyPtr fn = pop();
        if (fn->kind != PyKind::Global) fail("REDUCE of " + describe(*fn) + ", which is not callable");
        if (!args->is_tuple()) fail("REDUCE arguments are a " + describe(*args) + ", not a tuple");
        args->frozen = true;
        PyPtr out = hooks_.reduce(*fn, *args);
        if (++created_ > lim_.max_objects) fail("too many objects");
        push(std::move(out));
        break;
      }
      case 'b': {  // BUILD: only instance state of a dict (OrderedDict._metadata) is accepted, and dropped
        PyPtr state = pop();
        PyPtr& obj = top();
        if (obj->kind != PyKind::Dict || obj->frozen)
          fail("BUILD on " + describe(*obj) + " (only a dict's attributes may be set)");
        if (state->kind != PyKind::Dict && state->kind != PyKind::None && state->kind != PyKind::Tuple)
          fail("BUILD with state " + describe(*state));
        break;
      }
      case 'Q': {  // BINPERSID
        PyPtr pid = pop();
        pid->frozen = true;
        if (!hooks_.persistent_load) fail("persistent ids are not expected here");
        PyPtr out = hooks_.persistent_load(*pid);
        if (++created_ > lim_.max_objects) fail("too many objects");
        push(std::move(out));
        break;
      }
      case 'q': memo_put(*take(1)); break;                  // BINPUT
      case 'r': memo_put(take_le<std::uint32_t>()); break;  // LONG_BINPUT
      case 0x94: memo_put(memo_.size()); break;             // MEMOIZE
      case 'h': memo_get(*take(1)); break;                  // BINGET
      case 'j': memo_get(take_le<std::uint32_t>()); break;  // LONG_BINGET
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        fail(std::string("unsupported pickle opcode ") + hex);
      }
    }
  }
}

}  // namespace

std::pair<PyPtr, std::size_t> unpickle(std::span<const std::uint8_t> data, std::size_t start,
                                       const UnpicklerHooks& hooks, const std::string& where,
                                       const PickleLimits& limits) {
  Unpickler u(data, start, hooks, where, limits);
  return u.run();
}

}  // namespace diffprobe::io::detail
