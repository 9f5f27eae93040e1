from jaxmicro.errors import InputError, JaxmicroError, WeightsError
