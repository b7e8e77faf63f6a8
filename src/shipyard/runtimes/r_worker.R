# Shipyard's R worker: serves one model saved with saveRDS() to the Python server that started it.
#
#   Rscript --vanilla r_worker.R MODEL_NAME      (the name only labels the process)
#
# It reads requests on stdin and writes replies on stdout, in a binary little-endian protocol
# that needs nothing beyond base R (shipyard/runtimes/r_protocol.py is the other side):
#
#   int     4-byte signed integer
#   double  8-byte IEEE float
#   string  int byte length, then that many UTF-8 bytes
#   strings int count, int lengths[count], then the bytes of every string, back to back
#   column  int kind (0 = numbers, 1 = text), then nrow doubles or a `strings` of nrow
#   outputs int count, then per output: string name, int kind (0 = numbers, 1 = text),
#           int ndim, int dims[ndim], and the values in column-major order (doubles or a `strings`)
#
# Requests start with an int opcode:
#   1 LOAD     string path, string type, strings packages, strings columns (empty: ask the model)
#              reply: strings columns, strings column classes, string model class,
#                     string probe error, outputs of a one-row probe prediction (count 0 if it failed)
#   2 PREDICT  int nrow, int ncol, ncol columns; reply: outputs
# Every reply starts with the 4 bytes "SYR1" and an int status: 0 and the body above, or 1 and a
# string holding R's error message. End of input (the server closed the pipe) ends the worker.
# Whatever R or the model prints goes to stderr, so stdout carries replies only.

con_in <- file("stdin", open = "rb")
con_out <- file("/dev/stdout", open = "wb", raw = TRUE)
sink(stderr())

MAGIC <- charToRaw("SYR1")
NUMBERS <- 0L
TEXT <- 1L
state <- new.env()

# -- reading requests ---------------------------------------------------------------------------
read_exactly <- function(what, n, size) {
  if (n == 0L) return(vector(what, 0L))
  x <- readBin(con_in, what, n, size = size, endian = "little")
  if (length(x) < n) quit(save = "no", status = 0L)  # the server closed the pipe
  x
}
read_int <- function(n = 1L) read_exactly("integer", n, 4L)
read_doubles <- function(n) read_exactly("double", n, 8L)
read_string <- function() {
  bytes <- read_exactly("raw", read_int(), 1L)
  text <- if (length(bytes)) rawToChar(bytes) else ""
  Encoding(text) <- "UTF-8"
  text
}
read_strings <- function() {
  count <- read_int()
  if (count == 0L) return(character(0))
  lens <- read_int(count)
  blob <- read_exactly("raw", sum(lens), 1L)
  ends <- cumsum(lens)
  starts <- ends - lens + 1L
  text <- vapply(seq_len(count), function(i) if (lens[i] == 0L) "" else rawToChar(blob[starts[i]:ends[i]]), "")
  Encoding(text) <- "UTF-8"
  text
}
read_column <- function(nrow) {
  kind <- read_int()
  if (kind == NUMBERS) read_doubles(nrow) else read_strings()
}

# -- writing replies ----------------------------------------------------------------------------
enc_int <- function(x) writeBin(as.integer(x), raw(), size = 4L, endian = "little")
enc_doubles <- function(x) writeBin(as.double(x), raw(), size = 8L, endian = "little")
enc_string <- function(x) {
  bytes <- charToRaw(enc2utf8(as.character(x)))
  c(enc_int(length(bytes)), bytes)
}
enc_strings <- function(x) {
  x <- enc2utf8(as.character(x))
  x[is.na(x)] <- ""
  bytes <- lapply(x, charToRaw)
  c(enc_int(length(x)), enc_int(lengths(bytes)), unlist(bytes))
}
enc_value <- function(name, x) {
  if (is.data.frame(x)) x <- as.matrix(x)
  dims <- if (is.null(dim(x))) length(x) else dim(x)
  if (is.factor(x)) x <- as.character(x)
  head <- c(enc_string(name), enc_int(if (is.character(x)) TEXT else NUMBERS), enc_int(length(dims)), enc_int(dims))
  if (is.character(x)) return(c(head, enc_strings(as.vector(x))))
  if (is.numeric(x) || is.logical(x)) return(c(head, enc_doubles(as.vector(x))))
  stop(sprintf("predict() returned '%s' as a %s, which is neither numbers nor text", name, class(x)[1]))
}
# A list of predictions (e.g. MASS::lda's class and posterior) becomes one output per element;
# anything else is the single output "predict".
enc_outputs <- function(result) {
  if (is.list(result) && !is.data.frame(result)) {
    result <- result[!vapply(result, is.null, TRUE)]
    labels <- names(result)
    if (is.null(labels)) labels <- rep("", length(result))
    labels[labels == ""] <- paste0("output-", which(labels == "") - 1L)
  } else {
    result <- list(result)
    labels <- "predict"
  }
  body <- enc_int(length(result))
  for (i in seq_along(result)) body <- c(body, enc_value(labels[i], result[[i]]))
  body
}
send <- function(reply) {
  writeBin(c(MAGIC, reply), con_out)
  flush(con_out)
}

# -- the model ----------------------------------------------------------------------------------
safely <- function(expr) tryCatch(expr, error = function(e) NULL)

has_predict <- function(model, cls) {
  !is.null(utils::getS3method("predict", cls, optional = TRUE)) ||
    (isS4(model) && methods::existsMethod("predict", cls))
}

# A model read from .rds does not load the package that defines its predict() method: load the
# S4 class's package, or a package named like one of its S3 classes (rpart, randomForest, ...).
load_predict_method <- function(model) {
  package <- attr(class(model), "package")
  if (!is.null(package)) requireNamespace(package, quietly = TRUE)
  for (cls in class(model)) {
    if (has_predict(model, cls)) return(invisible())
    if (suppressWarnings(requireNamespace(cls, quietly = TRUE)) && has_predict(model, cls)) return(invisible())
  }
  stop(sprintf("R has no predict() method for a '%s'; name the package that defines it under 'packages'",
               class(model)[1]))
}

model_columns <- function(model) {
  terms <- safely(stats::terms(model))
  if (is.null(terms)) return(NULL)
  all.vars(stats::delete.response(terms))
}

column_classes <- function(model, columns) {
  known <- safely(attr(stats::terms(model), "dataClasses"))
  vapply(columns, function(column) {
    if (!is.null(known) && column %in% names(known)) unname(known[[column]]) else "numeric"
  }, "", USE.NAMES = FALSE)
}

model_xlevels <- function(model) {
  levels <- safely(model$xlevels)
  if (is.null(levels)) levels <- attr(model, "xlevels")
  levels
}

coerce_column <- function(x, class) if (class == "logical") as.logical(x) else x

make_frame <- function(columns, nrow) {
  columns <- Map(coerce_column, columns, state$classes)
  names(columns) <- state$columns
  list2DF(columns, nrow = nrow)
}

run_predict <- function(frame) {
  if (nzchar(state$type)) stats::predict(state$model, newdata = frame, type = state$type)
  else stats::predict(state$model, newdata = frame)
}

probe_value <- function(column, class, levels) {
  if (class %in% c("factor", "ordered", "character")) {
    first <- levels[[column]]
    if (is.null(first)) stop(sprintf("the levels of '%s' are not known", column))
    return(first[1])
  }
  if (class == "logical") FALSE else 1
}

# One prediction on a made-up row tells the outputs' names, kinds and shapes.
probe <- function() {
  levels <- model_xlevels(state$model)
  row <- Map(probe_value, state$columns, state$classes, MoreArgs = list(levels = levels))
  suppressWarnings(run_predict(make_frame(unname(row), 1L)))
}

handle_load <- function() {
  path <- read_string()
  type <- read_string()
  packages <- read_strings()
  columns <- read_strings()
  for (package in packages) suppressPackageStartupMessages(library(package, character.only = TRUE))
  model <- readRDS(path)
  load_predict_method(model)
  if (!length(columns)) columns <- model_columns(model)
  if (is.null(columns)) {
    stop(sprintf("cannot tell the input columns of a '%s' (it has no terms); list them under 'columns'",
                 class(model)[1]))
  }
  state$model <- model
  state$type <- type
  state$columns <- columns
  state$classes <- column_classes(model, columns)
  probed <- tryCatch(list(result = probe(), error = ""),
                     error = function(e) list(result = NULL, error = conditionMessage(e)))
  outputs <- if (is.null(probed$result)) enc_int(0L) else enc_outputs(probed$result)
  c(enc_strings(columns), enc_strings(state$classes), enc_string(paste(class(model), collapse = "/")),
    enc_string(probed$error), outputs)
}

handle_predict <- function() {
  nrow <- read_int()
  ncol <- read_int()
  columns <- lapply(seq_len(ncol), function(i) read_column(nrow))
  if (is.null(state$model)) stop("no model is loaded")
  if (ncol != length(state$columns)) {
    stop(sprintf("expected %d columns (%s), got %d",
                 length(state$columns), paste(state$columns, collapse = ", "), ncol))
  }
  enc_outputs(run_predict(make_frame(columns, nrow)))
}

log_warning <- function(w) {
  message("warning: ", conditionMessage(w))
  invokeRestart("muffleWarning")
}

repeat {
  op <- readBin(con_in, "integer", 1L, size = 4L, endian = "little")
  if (length(op) == 0L) break
  handler <- switch(as.character(op), "1" = handle_load, "2" = handle_predict, NULL)
  if (is.null(handler)) {
    send(c(enc_int(1L), enc_string(sprintf("unknown request %d; the worker and the server are out of step", op))))
    quit(save = "no", status = 2L)
  }
  reply <- tryCatch(
    c(enc_int(0L), withCallingHandlers(handler(), warning = log_warning)),
    error = function(e) c(enc_int(1L), enc_string(conditionMessage(e)))
  )
  send(reply)
}
