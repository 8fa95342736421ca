# Warnings on everywhere; sanitizers when DIFFPROBE_SANITIZE is set.
# -Wno-missing-field-initializers: the API takes option structs by designated initialisers, where
# leaving members at their defaults is the point.
function(diffprobe_set_warnings target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-unknown-pragmas -Wno-missing-field-initializers>)
endfunction()

if(DIFFPROBE_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()
